package sandbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"

	"github.com/hyperlet/hyperlet/pkg/agent"
	"github.com/hyperlet/hyperlet/pkg/oci"
)

// StopContainer signals a running container (SIGTERM, then SIGKILL after
// timeout seconds) and waits for it to exit. Stopping a container that is
// not running, or missing, succeeds.
func (m *Manager) StopContainer(ctx context.Context, id string, timeout int64) error {
	// A start in flight finishes first: then the container is stopped.
	c, err := m.lockExisting(id)
	if c == nil {
		return err
	}
	defer c.op.Unlock()
	return c.stop(ctx, timeout)
}

// stop does StopContainer's work; the caller holds c.op.
func (c *Container) stop(ctx context.Context, timeout int64) error {
	id := c.rec.ID
	c.mu.Lock()
	running := c.rec.State == runtime.ContainerState_CONTAINER_RUNNING
	proc, done := c.proc, c.done
	c.mu.Unlock()
	if !running || proc == nil {
		return nil
	}
	// Signals would wait on a paused guest, and land when it resumes.
	if c.pod.Paused() {
		return fmt.Errorf("stop container %s: %w", id, ErrPaused)
	}
	signal := func(sig uint32) error {
		// A guest that stopped answering must not hold the caller.
		sctx, cancel := context.WithTimeout(ctx, agentCallTimeout)
		defer cancel()
		return proc.Signal(sctx, sig)
	}
	if timeout > 0 {
		if err := signal(15); err != nil {
			klog.V(2).InfoS("SIGTERM", "container", id, "err", err)
		}
		select {
		case <-done:
			return nil
		case <-time.After(time.Duration(timeout) * time.Second):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := signal(9); err != nil {
		// A process that just exited cannot be signalled either: give its
		// exit a moment to be recorded.
		select {
		case <-done:
			return nil
		case <-time.After(2 * time.Second):
		}
		// Undelivered, it cannot end the container: say so now.
		return fmt.Errorf("kill container %s: %w", id, err)
	}
	select {
	case <-done:
		return nil
	case <-time.After(30 * time.Second):
		return fmt.Errorf("container %s did not exit after SIGKILL", id)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// RemoveContainer removes a container, stopping it first. Removing a
// missing container succeeds.
func (m *Manager) RemoveContainer(ctx context.Context, id string) error {
	c, err := m.lockExisting(id)
	if c == nil {
		return err
	}
	defer c.op.Unlock()
	// The guest must remove its side: a paused one cannot yet.
	if c.pod.Paused() {
		return fmt.Errorf("remove container %s: %w", id, ErrPaused)
	}
	if err := c.stop(ctx, 0); err != nil {
		return err
	}
	if client, err := c.pod.client(); err == nil {
		rctx, cancel := context.WithTimeout(ctx, agentCallTimeout)
		err := client.RemoveContainer(rctx, c.ID())
		cancel()
		if err != nil && !errors.Is(err, agent.ErrUnavailable) {
			return fmt.Errorf("remove container in VM: %w", err)
		}
	}
	if len(c.cfg.Mounts) > 0 {
		if err := unshareMounts(c.pod.rec.VM.SharedDir, c.rec.ID[:16]+"-"); err != nil {
			return fmt.Errorf("remove volumes of %s: %w", c.rec.ID, err)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := m.db.delete(containersBucket, c.rec.ID); err != nil {
		return fmt.Errorf("delete container record: %w", err)
	}
	c.removed = true // no late write may bring the record back
	if c.release != nil {
		c.release()
		c.release = nil
	}
	c.mu.Unlock()
	if err := m.hooks.RemoveContainer(ctx, c.pod, c); err != nil {
		klog.ErrorS(err, "NRI RemoveContainer", "container", c.rec.ID)
	}
	c.mu.Lock()
	m.mu.Lock()
	delete(m.ctrs, c.rec.ID)
	m.mu.Unlock()
	m.releaseName(c.name(), c.rec.ID)
	m.eventLocked(c, runtime.ContainerEventType_CONTAINER_DELETED_EVENT)
	return nil
}

// ReopenLog reopens a running container's log file after rotation.
func (m *Manager) ReopenLog(id string) error {
	c, err := m.Container(id)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rec.State != runtime.ContainerState_CONTAINER_RUNNING {
		return fmt.Errorf("container %s is not running: %w", id, ErrNotReady)
	}
	if c.log == nil {
		return nil
	}
	return c.log.Reopen()
}

// UpdateResources changes a running container's cgroup limits, as the NRI
// plugins adjust them.
func (m *Manager) UpdateResources(ctx context.Context, id string, r *runtime.LinuxContainerResources) error {
	return m.updateResources(ctx, id, r, true)
}

// ApplyResources changes a container's cgroup limits without asking the
// NRI plugins: it applies the updates they ask for themselves.
func (m *Manager) ApplyResources(ctx context.Context, id string, r *runtime.LinuxContainerResources) error {
	return m.updateResources(ctx, id, r, false)
}

func (m *Manager) updateResources(ctx context.Context, id string, r *runtime.LinuxContainerResources, hooks bool) error {
	c, client, err := m.lockContainer(id)
	if err != nil {
		return err
	}
	defer c.op.Unlock()
	if st := c.Status().State; st != runtime.ContainerState_CONTAINER_RUNNING && st != runtime.ContainerState_CONTAINER_CREATED {
		return fmt.Errorf("container %s is %s: %w", id, st, ErrNotReady)
	}
	if hooks {
		if r, err = m.hooks.UpdateContainer(ctx, c.pod, c, r); err != nil {
			return fmt.Errorf("NRI UpdateContainer: %w", err)
		}
	}
	if err := client.UpdateContainer(ctx, c.ID(), oci.Resources(r)); err != nil {
		return err
	}
	if hooks {
		defer func() {
			if err := m.hooks.PostUpdateContainer(ctx, c.pod, c); err != nil {
				klog.ErrorS(err, "NRI PostUpdateContainer", "container", id)
			}
		}()
	}
	r = proto.Clone(r).(*runtime.LinuxContainerResources)
	c.mu.Lock()
	c.resources = r
	c.mu.Unlock()
	raw, err := proto.Marshal(c.Config())
	if err != nil {
		return fmt.Errorf("encode container config: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rec.Config = raw
	if err := c.persistLocked(); err != nil {
		return fmt.Errorf("persist container: %w", err)
	}
	return nil
}
