// Package sandbox manages pod sandboxes: one micro-VM per pod, reached
// through its guest agent.
package sandbox

import (
	"context"
	"fmt"
	"time"

	"github.com/hyperlet/hyperlet/pkg/agent"
	"github.com/hyperlet/hyperlet/pkg/vm"
)

// BootVM starts a VM and waits until its agent answers. On any error the VM
// is killed and its files removed before BootVM returns.
func BootVM(ctx context.Context, hv vm.Hypervisor, cfg vm.Config) (_ vm.VM, _ *agent.Client, retErr error) {
	v, err := hv.Start(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	defer undo(&retErr, func() {
		v.Kill()
	})
	c, err := WaitAgent(ctx, v)
	if err != nil {
		return nil, nil, err
	}
	return v, c, nil
}

// WaitAgent dials a VM's agent, giving up early if the VM exits.
func WaitAgent(ctx context.Context, v vm.VM) (*agent.Client, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-v.Exited():
			cancel()
		case <-ctx.Done():
		}
	}()
	c, err := agent.Dial(ctx, v.AgentSocket())
	if err != nil {
		select {
		case <-v.Exited():
			return nil, fmt.Errorf("vm %s exited before its agent answered: %w", v.ID(), v.Wait(context.Background()))
		default:
		}
		return nil, fmt.Errorf("vm %s: %w", v.ID(), err)
	}
	vctx, vcancel := context.WithTimeout(ctx, 10*time.Second)
	defer vcancel()
	if _, err := c.Version(vctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("vm %s: %w", v.ID(), err)
	}
	// The guest has no RTC: give it the host's clock before anything runs.
	if err := c.SetTime(vctx, time.Now()); err != nil {
		c.Close()
		return nil, fmt.Errorf("vm %s: %w", v.ID(), err)
	}
	return c, nil
}

// AgentReady is a qemu.ReadyFunc: the guest is up when its agent answers.
func AgentReady(ctx context.Context, v vm.VM) error {
	c, err := WaitAgent(ctx, v)
	if err != nil {
		return err
	}
	return c.Close()
}
