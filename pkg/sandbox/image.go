package sandbox

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
	"github.com/hyperlet/hyperlet/pkg/vm"
)

// ensureImage attaches an image's disk to the VM and mounts it, once.
func (p *Pod) ensureImage(ctx context.Context, imageID, disk string) error {
	p.op.Lock()
	defer p.op.Unlock()
	p.mu.Lock()
	v, client := p.vm, p.agent
	ready := p.rec.State == runtime.PodSandboxState_SANDBOX_READY && v != nil
	paused := p.rec.Paused
	_, attached := p.rec.Images[imageID]
	p.rec.NextDisk++
	serial := p.rec.NextDisk
	p.mu.Unlock()
	if !ready {
		return fmt.Errorf("pod %s is not ready: %w", p.rec.ID, ErrNotReady)
	}
	if paused {
		return fmt.Errorf("pod %s: %w", p.rec.ID, ErrPaused)
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

// imageVolumes readies a container's image volumes (Mount.image): each
// image is pinned while the container exists, and attached to and mounted
// in the VM like a rootfs image. It returns what the guest mounts, the
// images' IDs in the order of the volumes, and the function that unpins
// them.
func (m *Manager) imageVolumes(ctx context.Context, pod *Pod, ms []*runtime.Mount) (_ []*agentapi.ImageVolume, ids []string, _ func(), retErr error) {
	var releases []func()
	release := func() {
		for _, r := range releases {
			r()
		}
	}
	defer undo(&retErr, func() {
		release()
	})
	var vols []*agentapi.ImageVolume
	for _, mnt := range ms {
		if mnt.GetImage() == nil {
			continue
		}
		ref := mnt.Image.GetImage()
		switch {
		case ref == "":
			return nil, nil, nil, fmt.Errorf("%w: image volume at %q names no image", ErrInvalid, mnt.ContainerPath)
		case !mnt.Readonly:
			return nil, nil, nil, fmt.Errorf("%w: image volume at %q must be read-only", ErrInvalid, mnt.ContainerPath)
		case !filepath.IsAbs(mnt.ContainerPath):
			return nil, nil, nil, fmt.Errorf("%w: image volume path %q is not absolute", ErrInvalid, mnt.ContainerPath)
		case mnt.ImageSubPath != "" && !filepath.IsLocal(mnt.ImageSubPath):
			return nil, nil, nil, fmt.Errorf("%w: image volume sub path %q leaves the image", ErrInvalid, mnt.ImageSubPath)
		}
		img, err := m.images.Get(ref)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("image volume %q: %w", ref, err)
		}
		id := img.ID.String()
		r, err := m.images.Acquire(id)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("pin image volume %q: %w", ref, err)
		}
		releases = append(releases, r)
		disk, err := m.images.Disk(ctx, id)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("image volume disk: %w", err)
		}
		if err := pod.ensureImage(ctx, id, disk); err != nil {
			return nil, nil, nil, err
		}
		ids = append(ids, id)
		vols = append(vols, &agentapi.ImageVolume{ImageId: agentImageID(id), SubPath: mnt.ImageSubPath, Destination: mnt.ContainerPath})
	}
	return vols, ids, release, nil
}
