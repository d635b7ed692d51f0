package sandbox

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"google.golang.org/protobuf/proto"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"

	"github.com/hyperlet/hyperlet/pkg/agent"
	"github.com/hyperlet/hyperlet/pkg/failpoint"
	"github.com/hyperlet/hyperlet/pkg/oci"
)

// CreateContainer prepares a container in the pod's VM from a pulled image.
func (m *Manager) CreateContainer(ctx context.Context, podID string, cfg *runtime.ContainerConfig) (_ *Container, retErr error) {
	if cfg.GetMetadata().GetName() == "" {
		return nil, fmt.Errorf("%w: container metadata name is required", ErrInvalid)
	}
	if cfg.GetImage().GetImage() == "" {
		return nil, fmt.Errorf("%w: container image is required", ErrInvalid)
	}
	pod, err := m.Pod(podID)
	if err != nil {
		return nil, err
	}
	client, err := pod.client()
	if err != nil {
		return nil, err
	}
	raw, err := proto.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: encode container config: %v", ErrInvalid, err)
	}
	ph := m.phases("CreateContainer")
	id := newID()
	c := newContainer(m, pod, cfg, containerRecord{
		ID: id, PodID: pod.ID(), Config: raw, CreatedAt: time.Now().UnixNano(),
		State: runtime.ContainerState_CONTAINER_CREATED,
	})
	if err := m.reserveName(c.name(), id); err != nil {
		return nil, err
	}
	defer m.hooks.Block()()
	defer undo(&retErr, func() {
		m.releaseName(c.name(), id)
	})

	img, err := m.images.Get(cfg.Image.Image)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", cfg.Image.Image, err)
	}
	imageID := img.ID.String()
	release, err := m.images.Acquire(imageID)
	if err != nil {
		return nil, fmt.Errorf("pin image: %w", err)
	}
	defer undo(&retErr, func() {
		release()
	})
	vols, volIDs, releaseVols, err := m.imageVolumes(ctx, pod, cfg.Mounts)
	if err != nil {
		return nil, err
	}
	defer undo(&retErr, func() {
		releaseVols()
	})
	c.rec.VolumeImages = volIDs
	imgCfg, err := m.images.ConfigFile(img)
	if err != nil {
		return nil, err
	}
	disk, err := m.images.Disk(ctx, imageID)
	if err != nil {
		return nil, fmt.Errorf("image disk: %w", err)
	}
	ph.done("image")
	if err := pod.ensureImage(ctx, imageID, disk); err != nil {
		return nil, err
	}
	ph.done("attach")
	c.rec.ImageID = imageID
	c.rec.ImageRef = imageID
	if len(img.RepoDigests) > 0 {
		c.rec.ImageRef = img.RepoDigests[0]
	}
	if dir, lp := pod.cfg.GetLogDirectory(), cfg.GetLogPath(); dir != "" && lp != "" {
		if !filepath.IsAbs(dir) || !filepath.IsLocal(lp) {
			return nil, fmt.Errorf("%w: log path %q must be relative and inside the pod's log directory %q", ErrInvalid, lp, dir)
		}
		c.rec.LogPath = filepath.Join(dir, lp)
	}
	// The record goes first: a daemon killed from here on finds it and
	// removes what the guest and the share got.
	c.rec.Intent = IntentCreate
	if err := c.persistLocked(); err != nil {
		return nil, fmt.Errorf("persist container: %w", err)
	}
	defer undo(&retErr, func() {
		if err := m.db.delete(containersBucket, id); err != nil {
			klog.ErrorS(err, "delete record of a container that failed to create; the next start removes it", "container", id)
		}
	})
	if err := failpoint.Hit("create-container:before-volumes"); err != nil {
		return nil, err
	}
	var hostMounts []*runtime.Mount
	for _, mnt := range cfg.Mounts {
		if mnt.GetImage() == nil {
			hostMounts = append(hostMounts, mnt)
		}
	}
	// The spec names the volumes' host paths until the NRI plugins have
	// seen (and perhaps adjusted) it; then every host bind it holds is
	// shared into the VM and named by its guest path.
	spec, user, err := oci.Spec(oci.Input{
		Mounts:  hostBinds(hostMounts),
		Config:  cfg,
		Sandbox: pod.cfg,
		Image: oci.ImageConfig{
			Entrypoint: imgCfg.Config.Entrypoint, Cmd: imgCfg.Config.Cmd, Env: imgCfg.Config.Env,
			WorkingDir: imgCfg.Config.WorkingDir, User: imgCfg.Config.User,
		},
	})
	switch {
	case errors.Is(err, oci.ErrInvalid):
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	case errors.Is(err, oci.ErrUnsupported):
		return nil, fmt.Errorf("%w: %v", ErrUnsupported, err)
	case err != nil:
		return nil, err
	}
	guestMounts := guestSourced(spec.Mounts, hostMounts)
	if err := m.hooks.CreateContainer(ctx, pod, c, spec); err != nil {
		return nil, fmt.Errorf("NRI CreateContainer: %w", err)
	}
	defer undo(&retErr, func() {
		m.undoContainerHooks(pod, c)
	})
	if err := failpoint.Hit("create-container:before-volumes"); err != nil {
		return nil, err
	}
	ph.done("spec")
	userns := ""
	if pid := pod.VMPID(); pid > 0 {
		userns = fmt.Sprintf("/proc/%d/ns/user", pid)
	}
	volumes, at := volumesOf(spec.Mounts, hostMounts, guestMounts)
	mounts, err := shareMounts(pod.rec.VM.SharedDir, userns, id, volumes)
	if err != nil {
		return nil, err
	}
	defer undo(&retErr, func() {
		unshareMounts(pod.rec.VM.SharedDir, id[:16]+"-")
	})
	if propagates(volumes) {
		pod.relayMounts(ctx)
	}
	spec.Mounts = placeVolumes(spec.Mounts, at, mounts)
	ph.done("volumes")
	if err := failpoint.Hit("create-container:before-guest"); err != nil {
		return nil, err
	}
	// The guest may have made the container even if the call failed (out
	// of time): removal is idempotent, so undo it either way.
	defer undo(&retErr, func() {
		rctx, cancel := context.WithTimeout(context.Background(), agentCallTimeout)
		client.RemoveContainer(rctx, id)
		cancel()
	})
	u, err := client.CreateContainer(ctx, agent.ContainerCreate{
		ID: id, ImageID: agentImageID(imageID), User: user, Spec: spec, ImageVolumes: vols,
		StrictGroups: cfg.GetLinux().GetSecurityContext().GetSupplementalGroupsPolicy() == runtime.SupplementalGroupsPolicy_Strict,
	})
	if err != nil {
		return nil, err
	}
	c.rec.User = &u
	ph.done("guest")
	if err := failpoint.Hit("create-container:before-record"); err != nil {
		return nil, err
	}
	c.release = func() { release(); releaseVols() }
	c.rec.Intent = ""
	if err := c.persistLocked(); err != nil {
		return nil, fmt.Errorf("persist container: %w", err)
	}
	m.mu.Lock()
	m.ctrs[id] = c
	m.mu.Unlock()
	ph.done("record")
	m.event(c, runtime.ContainerEventType_CONTAINER_CREATED_EVENT)
	klog.InfoS("container created", "container", id, "pod", pod.ID(), "name", cfg.Metadata.Name, "image", imageID)
	if err := m.hooks.PostCreateContainer(ctx, pod, c); err != nil {
		klog.ErrorS(err, "NRI PostCreateContainer", "container", id)
	}
	return c, nil
}

// undoContainerHooks tells the plugins a container they were told of is
// gone.
func (m *Manager) undoContainerHooks(p *Pod, c *Container) {
	ctx, cancel := context.WithTimeout(context.Background(), agentCallTimeout)
	defer cancel()
	if err := m.hooks.StopContainer(ctx, p, c); err != nil {
		klog.ErrorS(err, "NRI StopContainer of a container that failed to create", "container", c.ID())
	}
	if err := m.hooks.RemoveContainer(ctx, p, c); err != nil {
		klog.ErrorS(err, "NRI RemoveContainer of a container that failed to create", "container", c.ID())
	}
}
