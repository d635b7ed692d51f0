package sandbox

import (
	"context"
	"fmt"
	"strings"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hyperlet/hyperlet/pkg/vm"
)

// ensureImage attaches an image's disk to the VM and mounts it, once.
func (p *Pod) ensureImage(ctx context.Context, imageID, disk string) error {
	p.op.Lock()
	defer p.op.Unlock()
	p.mu.Lock()
	v, client := p.vm, p.agent
	ready := p.rec.State == runtime.PodSandboxState_SANDBOX_READY && v != nil
	_, attached := p.rec.Images[imageID]
	p.rec.NextDisk++
	serial := p.rec.NextDisk
	p.mu.Unlock()
	if !ready {
		return fmt.Errorf("pod %s is not ready: %w", p.rec.ID, ErrNotReady)
	}
	if attached {
		return nil
	}
	addr, err := v.AddDisk(ctx, vm.Disk{ID: fmt.Sprintf("img%d", serial), Path: disk, ReadOnly: true})
	if err != nil {
		return fmt.Errorf("attach image disk: %w", err)
	}
	mctx, cancel := context.WithTimeout(ctx, mountTimeout)
	defer cancel()
	if err := client.MountImage(mctx, agentImageID(imageID), uint32(addr.Target), uint32(addr.LUN)); err != nil {
		return fmt.Errorf("mount image in VM: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rec.Images[imageID] = addr
	return p.persist()
}

// mountTimeout bounds the guest's mount of an image disk, which the pod's
// lifecycle lock is held across.
const mountTimeout = 30 * time.Second

// agentImageID names an image inside the VM ("sha256:..." without the colon).
func agentImageID(id string) string { return strings.ReplaceAll(id, ":", "-") }
