package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"

	"github.com/hyperlet/hyperlet/pkg/failpoint"
)

// StopPod stops the pod's containers and its VM. Stopping a stopped pod
// succeeds.
func (m *Manager) StopPod(ctx context.Context, id string) error {
	p, err := m.Pod(id)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	// A paused VM runs again, so that its containers stop in order, and
	// is not paused again while they do.
	p.op.Lock()
	p.mu.Lock()
	p.stopping = true
	paused := p.rec.Paused
	p.mu.Unlock()
	if paused {
		if err := p.resume(ctx); err != nil {
			klog.InfoS("resume paused pod to stop it", "pod", p.ID(), "err", err)
		}
	}
	p.op.Unlock()
	for _, c := range m.podContainers(p.ID()) {
		if err := m.StopContainer(ctx, c.ID(), 0); err != nil {
			klog.InfoS("stop container of stopping pod", "container", c.ID(), "err", err)
		}
	}
	p.op.Lock()
	defer p.op.Unlock()
	// The plugins hear of the stop once, with the containers stopped and
	// the pod still there.
	p.mu.Lock()
	tell := !p.hooksStopped
	p.hooksStopped = true
	p.mu.Unlock()
	if tell {
		if err := m.hooks.StopPodSandbox(ctx, p); err != nil {
			klog.ErrorS(err, "NRI StopPodSandbox", "pod", p.ID())
		}
	}
	p.stopVM()
	// With the VM gone nothing reads the shared volumes: release the binds
	// now, so kubelet's unmount of a stopped pod's volumes frees them
	// (a tmpfs would live on in the bind until the pod's removal).
	serr := removeShared(p.rec.VM.SharedDir)
	// Not ready from here on, whatever the network teardown says: the VM
	// is gone.
	p.mu.Lock()
	wasReady := p.rec.State != runtime.PodSandboxState_SANDBOX_NOTREADY
	p.rec.State = runtime.PodSandboxState_SANDBOX_NOTREADY
	perr := p.persist()
	p.mu.Unlock()
	if err := failpoint.Hit("stop-pod:before-network"); err != nil {
		return err
	}
	if err := m.detachNetwork(ctx, p); err != nil {
		return fmt.Errorf("tear down pod network: %w", err)
	}
	if perr != nil {
		return fmt.Errorf("persist pod: %w", perr)
	}
	if serr != nil {
		return fmt.Errorf("release the pod's volumes: %w", serr)
	}
	if wasReady {
		klog.InfoS("pod stopped", "pod", p.ID())
	}
	return nil
}

// stopVM ends the VM. Its containers are stopped and their output is in
// their logs by now, and nothing in the guest outlives the pod (volumes
// write through to the host), so the VM is killed: a guest poweroff added
// ~150 ms under TCG (the agent's reply delay, sync, reboot) for nothing.
// The caller holds p.op.
func (p *Pod) stopVM() {
	p.mu.Lock()
	v, client := p.vm, p.agent
	p.mu.Unlock()
	if v == nil {
		return
	}
	p.stopRelay()
	if client != nil {
		client.Close()
	}
	select {
	case <-v.Exited():
	default:
		v.Kill()
		v.Wait(context.Background())
	}
	p.mu.Lock()
	p.vm, p.agent = nil, nil
	p.rec.Paused = false // persisted with the pod's state
	p.mu.Unlock()
}

// RemovePod stops the pod, removes its containers and deletes everything it
// had on the host. Removing a missing pod succeeds.
func (m *Manager) RemovePod(ctx context.Context, id string) error {
	p, err := m.Pod(id)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := m.StopPod(ctx, p.ID()); err != nil {
		return err
	}
	for _, c := range m.podContainers(p.ID()) {
		if err := m.RemoveContainer(ctx, c.ID()); err != nil {
			return fmt.Errorf("remove container %s: %w", c.ID(), err)
		}
	}
	p.op.Lock()
	defer p.op.Unlock()
	if err := failpoint.Hit("remove-pod:before-files"); err != nil {
		return err
	}
	if p.rec.VM.SharedDir != "" {
		if err := removeShared(p.rec.VM.SharedDir); err != nil {
			return err
		}
	}
	if err := os.RemoveAll(p.dir()); err != nil {
		return fmt.Errorf("remove pod directory: %w", err)
	}
	if err := m.db.delete(podsBucket, p.ID()); err != nil {
		return fmt.Errorf("delete pod record: %w", err)
	}
	if err := m.hooks.RemovePodSandbox(ctx, p); err != nil {
		klog.ErrorS(err, "NRI RemovePodSandbox", "pod", p.ID())
	}
	m.mu.Lock()
	delete(m.pods, p.ID())
	m.mu.Unlock()
	m.releaseName(p.name(), p.ID())
	klog.InfoS("pod removed", "pod", p.ID())
	return nil
}

func (m *Manager) podContainers(podID string) []*Container {
	var out []*Container
	for _, c := range m.Containers() {
		if c.rec.PodID == podID {
			out = append(out, c)
		}
	}
	return out
}
