package sandbox

import (
	"context"
	"fmt"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"

	"github.com/hyperlet/hyperlet/pkg/vm"
)

// PausePod stops the pod VM's vCPUs: nothing in the pod runs until
// ResumePod, but its memory, devices and network stay. While it is paused,
// calls that need the guest (create, start, exec, stats...) fail with
// ErrPaused instead of hanging; StopPodSandbox resumes it first. Pausing a
// paused pod succeeds.
func (m *Manager) PausePod(ctx context.Context, id string) error {
	p, err := m.Pod(id)
	if err != nil {
		return err
	}
	p.op.Lock()
	defer p.op.Unlock()
	pv, err := p.pauser()
	if err != nil {
		return err
	}
	p.mu.Lock()
	if p.stopping {
		p.mu.Unlock()
		return fmt.Errorf("pod %s is stopping: %w", id, ErrNotReady)
	}
	if p.rec.Paused {
		p.mu.Unlock()
		return nil
	}
	// Refuse new guest calls before the vCPUs stop, so none starts and hangs.
	p.rec.Paused = true
	err = p.persist()
	p.mu.Unlock()
	if err != nil {
		p.setPaused(false)
		return fmt.Errorf("persist pod: %w", err)
	}
	if err := pv.Pause(ctx); err != nil {
		// The stop may have taken effect before the error: undo it; if
		// that fails too, the pod stays paused, for unpause to retry.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if rerr := pv.Resume(rctx); rerr != nil {
			klog.ErrorS(rerr, "resume a pod VM after a failed pause; it stays paused", "pod", id)
			return err
		}
		p.setPaused(false)
		return err
	}
	klog.InfoS("pod VM paused", "pod", id)
	return nil
}

// ResumePod starts a paused pod VM's vCPUs again and sets the guest's clock,
// which stood still meanwhile. Resuming a running pod succeeds.
func (m *Manager) ResumePod(ctx context.Context, id string) error {
	p, err := m.Pod(id)
	if err != nil {
		return err
	}
	p.op.Lock()
	defer p.op.Unlock()
	return p.resume(ctx)
}

// resume is ResumePod with p.op held. QMP cont is sent even when the pod is
// not marked paused: it is harmless on a running VM and frees one whose
// pause failed halfway.
func (p *Pod) resume(ctx context.Context) error {
	p.mu.Lock()
	client := p.agent
	p.mu.Unlock()
	pv, err := p.pauser()
	if err != nil {
		return err
	}
	if err := pv.Resume(ctx); err != nil {
		return err
	}
	if err := p.setPaused(false); err != nil {
		klog.ErrorS(err, "persist resumed pod", "pod", p.ID())
	}
	if client != nil {
		tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := client.SetTime(tctx, time.Now()); err != nil {
			klog.InfoS("set the clock of a resumed pod VM", "pod", p.ID(), "err", err)
		}
		cancel()
	}
	klog.InfoS("pod VM resumed", "pod", p.ID())
	return nil
}

// Paused says whether the pod's VM is paused.
func (p *Pod) Paused() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.rec.Paused
}

// pauser returns the VM of a ready pod, if its hypervisor can pause it.
func (p *Pod) pauser() (vm.Pauser, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.rec.State != runtime.PodSandboxState_SANDBOX_READY || p.vm == nil {
		return nil, fmt.Errorf("pod %s is not ready: %w", p.rec.ID, ErrNotReady)
	}
	pv, ok := p.vm.(vm.Pauser)
	if !ok {
		return nil, fmt.Errorf("pause pod %s: its hypervisor cannot pause: %w", p.rec.ID, ErrUnsupported)
	}
	return pv, nil
}

func (p *Pod) setPaused(v bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rec.Paused = v
	return p.persist()
}
