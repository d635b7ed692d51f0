package sandbox

import (
	"context"
	"fmt"
	"os"

	"github.com/hyperlet/hyperlet/pkg/agent"
	"github.com/hyperlet/hyperlet/pkg/vm"
)

// vmSource is where a pod's VM comes from: a warm VM from the pool when one
// fits, else a new one (a template clone when a template is ready, a cold
// boot otherwise). RunPod drives either the same way.
type vmSource interface {
	// prepare makes vc the configuration of the pod's VM and readies what
	// it needs on the host, before the pod's record is written. It
	// returns how the VM starts (BootPool), or "" when start decides.
	prepare(vc *vm.Config) (boot string, err error)
	// hostTap names the tap the VM already has, "" if it needs a new one.
	hostTap() string
	// start returns the pod's running VM and its agent, given the pod's
	// NIC, with the configuration it runs with and how it started. On
	// error it returns no VM.
	start(ctx context.Context, vc vm.Config, nic *vm.NetDevice) (vm.VM, *agent.Client, vm.Config, string, error)
	// release stops what prepare readied when the pod never got its VM
	// from start.
	release()
}

// vmSource picks a pod's VM source for vc.
func (m *Manager) vmSource(vc vm.Config) vmSource {
	if w := m.pool.take(vc); w != nil {
		return &warmSource{pl: m.pool, w: w}
	}
	return &bootSource{m: m}
}

// warmSource hands a warm VM over to a pod.
type warmSource struct {
	pl *pool
	w  *warmVM
}

func (s *warmSource) prepare(vc *vm.Config) (string, error) {
	// The warm VM becomes the pod's: its console log moves to the pod.
	if err := os.Rename(s.w.Config.ConsoleLog, vc.ConsoleLog); err != nil {
		return "", fmt.Errorf("adopt warm VM: %w", err)
	}
	s.w.Config.ConsoleLog = vc.ConsoleLog
	s.w.Config.CgroupParent, s.w.Config.OOMScoreAdj = vc.CgroupParent, vc.OOMScoreAdj
	*vc = s.w.Config
	return BootPool, nil
}

func (s *warmSource) hostTap() string { return s.w.Tap }

func (s *warmSource) start(ctx context.Context, vc vm.Config, nic *vm.NetDevice) (vm.VM, *agent.Client, vm.Config, string, error) {
	// The pod's record owns the VM now.
	s.pl.adopted(s.w)
	if c, ok := s.w.vm.(vm.Confiner); ok {
		if err := c.Confine(vc.CgroupParent, vc.OOMScoreAdj); err != nil {
			return nil, nil, vc, "", fmt.Errorf("move warm VM into the pod's cgroup: %w", err)
		}
	}
	return s.w.vm, s.w.client, vc, BootPool, nil
}

func (s *warmSource) release() { s.pl.discard(s.w) }

// bootSource starts a new VM: a template clone or a cold boot.
type bootSource struct{ m *Manager }

func (s *bootSource) prepare(vc *vm.Config) (string, error) { return "", makeShared(vc.SharedDir) }

func (s *bootSource) hostTap() string { return "" }

func (s *bootSource) start(ctx context.Context, vc vm.Config, nic *vm.NetDevice) (vm.VM, *agent.Client, vm.Config, string, error) {
	vc.Net = nic
	v, client, vc, boot, err := s.m.startVM(ctx, vc)
	nic.Tap.Close() // QEMU holds its own copy
	if err != nil {
		return nil, nil, vc, "", fmt.Errorf("boot pod VM: %w", err)
	}
	return v, client, vc, boot, nil
}

func (s *bootSource) release() {}
