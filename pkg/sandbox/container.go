package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
	"github.com/hyperlet/hyperlet/pkg/agent"
	"github.com/hyperlet/hyperlet/pkg/crilog"
	"github.com/hyperlet/hyperlet/pkg/oci"
)

// containerRecord is what survives a daemon restart.
type containerRecord struct {
	ID         string                 `json:"id"`
	PodID      string                 `json:"podId"`
	Config     []byte                 `json:"config"` // runtime.ContainerConfig, protobuf
	ImageID    string                 `json:"imageId"`
	ImageRef   string                 `json:"imageRef"`
	LogPath    string                 `json:"logPath,omitempty"`
	State      runtime.ContainerState `json:"state"`
	CreatedAt  int64                  `json:"createdAt"`
	StartedAt  int64                  `json:"startedAt,omitempty"`
	FinishedAt int64                  `json:"finishedAt,omitempty"`
	ExitCode   int32                  `json:"exitCode"`
	Reason     string                 `json:"reason,omitempty"`
	Message    string                 `json:"message,omitempty"`
	Pid        uint32                 `json:"pid,omitempty"`
}

// Container is one container of a pod.
type Container struct {
	m   *Manager
	pod *Pod
	cfg *runtime.ContainerConfig

	mu      sync.Mutex
	rec     containerRecord
	release func()        // unpins the image
	done    chan struct{} // closed once a started container's exit is recorded
	log     *crilog.File
	proc    *agent.Process
	outs    [2]*fanout // attached clients, by agentapi.Stream

	stdinMu  sync.Mutex
	stdinOff uint64 // stdin bytes attached clients have sent
}

func newContainer(m *Manager, pod *Pod, cfg *runtime.ContainerConfig, rec containerRecord) *Container {
	return &Container{m: m, pod: pod, cfg: cfg, rec: rec, outs: [2]*fanout{{}, {}}}
}

// Status is a snapshot of a container's record.
type Status = containerRecord

// ID is the container's ID.
func (c *Container) ID() string { return c.rec.ID }

// PodID is the ID of the container's pod.
func (c *Container) PodID() string { return c.rec.PodID }

// Config is the container's CRI configuration.
func (c *Container) Config() *runtime.ContainerConfig { return c.cfg }

// Status returns the container's current state.
func (c *Container) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rec
}

func (c *Container) name() string {
	md := c.cfg.GetMetadata()
	pmd := c.pod.cfg.GetMetadata()
	return fmt.Sprintf("%s_%s_%s_%s_%d", md.GetName(), pmd.GetName(), pmd.GetNamespace(), pmd.GetUid(), md.GetAttempt())
}

func (c *Container) persistLocked() error { return c.m.db.put(containersBucket, c.rec.ID, &c.rec) }

func (m *Manager) event(c *Container, t runtime.ContainerEventType) {
	st := c.Status()
	m.events.publish(&runtime.ContainerEventResponse{
		ContainerId:        st.ID,
		ContainerEventType: t,
		CreatedAt:          time.Now().UnixNano(),
		PodSandboxStatus:   &runtime.PodSandboxStatus{Id: st.PodID},
	})
}

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
	id := newID()
	c := newContainer(m, pod, cfg, containerRecord{
		ID: id, PodID: pod.ID(), Config: raw, CreatedAt: time.Now().UnixNano(),
		State: runtime.ContainerState_CONTAINER_CREATED,
	})
	if err := m.reserveName(c.name(), id); err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			m.releaseName(c.name(), id)
		}
	}()

	img, err := m.images.Get(cfg.Image.Image)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", cfg.Image.Image, err)
	}
	imageID := img.ID.String()
	release, err := m.images.Acquire(imageID)
	if err != nil {
		return nil, fmt.Errorf("pin image: %w", err)
	}
	defer func() {
		if retErr != nil {
			release()
		}
	}()
	imgCfg, err := m.images.ConfigFile(img)
	if err != nil {
		return nil, err
	}
	disk, err := m.images.Disk(ctx, imageID)
	if err != nil {
		return nil, fmt.Errorf("image disk: %w", err)
	}
	if err := pod.ensureImage(ctx, imageID, disk); err != nil {
		return nil, err
	}
	userns := ""
	if pid := pod.VMPID(); pid > 0 {
		userns = fmt.Sprintf("/proc/%d/ns/user", pid)
	}
	mounts, err := shareMounts(pod.rec.VM.SharedDir, userns, id, cfg.Mounts)
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			unshareMounts(pod.rec.VM.SharedDir, id[:16]+"-")
		}
	}()
	spec, user, err := oci.Spec(oci.Input{
		Mounts:  mounts,
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
	if err := client.CreateContainer(ctx, id, agentImageID(imageID), user, spec); err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			client.RemoveContainer(context.Background(), id)
		}
	}()
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
	c.release = release
	if err := c.persistLocked(); err != nil {
		return nil, fmt.Errorf("persist container: %w", err)
	}
	m.mu.Lock()
	m.ctrs[id] = c
	m.mu.Unlock()
	m.event(c, runtime.ContainerEventType_CONTAINER_CREATED_EVENT)
	klog.InfoS("container created", "container", id, "pod", pod.ID(), "name", cfg.Metadata.Name, "image", imageID)
	return c, nil
}

// StartContainer starts a created container.
func (m *Manager) StartContainer(ctx context.Context, id string) error {
	c, err := m.Container(id)
	if err != nil {
		return err
	}
	client, err := c.pod.client()
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rec.State != runtime.ContainerState_CONTAINER_CREATED {
		return fmt.Errorf("container %s is %s, not created: %w", c.rec.ID, c.rec.State, ErrNotReady)
	}
	var log *crilog.File
	if c.rec.LogPath != "" {
		if log, err = crilog.Open(c.rec.LogPath); err != nil {
			return err
		}
	}
	proc, err := client.StartContainer(ctx, c.rec.ID, c.cfg.GetStdin())
	if err != nil {
		if log != nil {
			log.Close()
		}
		c.rec.State = runtime.ContainerState_CONTAINER_EXITED
		c.rec.FinishedAt = time.Now().UnixNano()
		c.rec.ExitCode, c.rec.Reason, c.rec.Message = 128, "StartError", err.Error()
		c.persistLocked()
		return err
	}
	c.rec.State = runtime.ContainerState_CONTAINER_RUNNING
	c.rec.StartedAt = time.Now().UnixNano()
	c.rec.Pid = proc.Pid
	if err := c.persistLocked(); err != nil {
		klog.ErrorS(err, "persist started container", "container", c.rec.ID)
	}
	c.log, c.proc, c.done = log, proc, make(chan struct{})
	go m.monitor(c, proc, log, false)
	go m.event(c, runtime.ContainerEventType_CONTAINER_STARTED_EVENT)
	return nil
}

// monitor copies a running container's output to its log and records its
// exit. resume is set for containers taken over after a daemon restart.
func (m *Manager) monitor(c *Container, proc *agent.Process, log *crilog.File, resume bool) {
	ctx := context.Background()
	var wg sync.WaitGroup
	streams := []agentapi.Stream{agentapi.Stream_STDOUT}
	if !c.cfg.GetTty() {
		streams = append(streams, agentapi.Stream_STDERR)
	}
	for _, s := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := teeCloser{attached: c.outs[s]}
			if log != nil {
				w.log = log.Stream(streamNames[s])
			}
			var err error
			if resume {
				_, err = proc.ResumeOutput(ctx, s, w)
			} else {
				_, err = proc.CopyOutput(ctx, s, 0, w)
			}
			w.Close()
			if err != nil {
				klog.V(2).InfoS("container output ended", "container", c.rec.ID, "stream", s, "err", err)
			}
		}()
	}
	st, err := proc.Wait(ctx)
	logsDone := make(chan struct{})
	go func() { wg.Wait(); close(logsDone) }()
	select {
	case <-logsDone:
	case <-time.After(10 * time.Second):
		klog.InfoS("container output still open after exit (a child holds it)", "container", c.rec.ID)
	}

	c.mu.Lock()
	c.rec.State = runtime.ContainerState_CONTAINER_EXITED
	switch {
	case err != nil:
		c.rec.FinishedAt = time.Now().UnixNano()
		c.rec.ExitCode, c.rec.Reason = 255, "Error"
		c.rec.Message = fmt.Sprintf("lost the container: %v", err)
	default:
		c.rec.FinishedAt = st.ExitedAtUnixNano
		c.rec.ExitCode = st.ExitCode
		switch {
		case st.OomKilled:
			c.rec.Reason = "OOMKilled"
		case st.ExitCode == 0:
			c.rec.Reason = "Completed"
		default:
			c.rec.Reason = "Error"
		}
	}
	if err := c.persistLocked(); err != nil {
		klog.ErrorS(err, "persist exited container", "container", c.rec.ID)
	}
	done := c.done
	c.mu.Unlock()
	if log != nil {
		log.Close()
	}
	close(done)
	klog.InfoS("container exited", "container", c.rec.ID, "code", c.rec.ExitCode, "reason", c.rec.Reason)
	m.event(c, runtime.ContainerEventType_CONTAINER_STOPPED_EVENT)
}

// streamNames are the CRI log's stream names, by agentapi.Stream.
var streamNames = [2]string{agentapi.Stream_STDOUT: "stdout", agentapi.Stream_STDERR: "stderr"}

// teeCloser writes to attached clients and to the log, if there is one.
type teeCloser struct {
	log      io.WriteCloser
	attached io.Writer
}

func (t teeCloser) Write(p []byte) (int, error) {
	t.attached.Write(p)
	if t.log == nil {
		return len(p), nil
	}
	return t.log.Write(p)
}

func (t teeCloser) Close() error {
	if t.log == nil {
		return nil
	}
	return t.log.Close()
}

// StopContainer signals a running container (SIGTERM, then SIGKILL after
// timeout seconds) and waits for it to exit. Stopping a container that is
// not running, or missing, succeeds.
func (m *Manager) StopContainer(ctx context.Context, id string, timeout int64) error {
	c, err := m.Container(id)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	c.mu.Lock()
	running := c.rec.State == runtime.ContainerState_CONTAINER_RUNNING
	proc, done := c.proc, c.done
	c.mu.Unlock()
	if !running || proc == nil {
		return nil
	}
	if timeout > 0 {
		if err := proc.Signal(ctx, 15); err != nil {
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
	if err := proc.Signal(ctx, 9); err != nil {
		klog.V(2).InfoS("SIGKILL", "container", id, "err", err)
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
	c, err := m.Container(id)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := m.StopContainer(ctx, c.ID(), 0); err != nil {
		return err
	}
	if client, err := c.pod.client(); err == nil {
		if err := client.RemoveContainer(ctx, c.ID()); err != nil && !errors.Is(err, agent.ErrUnavailable) {
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
	if c.release != nil {
		c.release()
		c.release = nil
	}
	m.mu.Lock()
	delete(m.ctrs, c.rec.ID)
	m.mu.Unlock()
	m.releaseName(c.name(), c.rec.ID)
	go m.event(c, runtime.ContainerEventType_CONTAINER_DELETED_EVENT)
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

// UpdateResources changes a running container's cgroup limits.
func (m *Manager) UpdateResources(ctx context.Context, id string, r *runtime.LinuxContainerResources) error {
	c, err := m.Container(id)
	if err != nil {
		return err
	}
	client, err := c.pod.client()
	if err != nil {
		return err
	}
	if st := c.Status().State; st != runtime.ContainerState_CONTAINER_RUNNING && st != runtime.ContainerState_CONTAINER_CREATED {
		return fmt.Errorf("container %s is %s: %w", id, st, ErrNotReady)
	}
	if err := client.UpdateContainer(ctx, c.ID(), oci.Resources(r)); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cfg.Linux == nil {
		c.cfg.Linux = &runtime.LinuxContainerConfig{}
	}
	c.cfg.Linux.Resources = r
	if raw, err := proto.Marshal(c.cfg); err == nil {
		c.rec.Config = raw
		c.persistLocked()
	}
	return nil
}

// restoreContainer rebuilds a container from its record and, if it was
// running, resumes watching it.
func (m *Manager) restoreContainer(p *Pod, r *containerRecord) (*Container, error) {
	cfg := &runtime.ContainerConfig{}
	if err := proto.Unmarshal(r.Config, cfg); err != nil {
		return nil, fmt.Errorf("decode container config: %w", err)
	}
	c := newContainer(m, p, cfg, *r)
	if release, err := m.images.Acquire(r.ImageID); err == nil {
		c.release = release
	} else {
		klog.ErrorS(err, "pin image of restored container", "container", r.ID, "image", r.ImageID)
	}
	if r.State != runtime.ContainerState_CONTAINER_RUNNING {
		return c, nil
	}
	client, err := p.client()
	if err != nil {
		c.rec.State = runtime.ContainerState_CONTAINER_EXITED
		c.rec.FinishedAt = time.Now().UnixNano()
		c.rec.ExitCode, c.rec.Reason = 255, "Error"
		c.rec.Message = "the pod VM stopped while hyperlet was down"
		c.persistLocked()
		return c, nil
	}
	var log *crilog.File
	if r.LogPath != "" {
		if log, err = crilog.Open(r.LogPath); err != nil {
			klog.ErrorS(err, "reopen container log", "container", r.ID)
			log = nil
		}
	}
	proc := client.Process(r.ID)
	c.log, c.proc, c.done = log, proc, make(chan struct{})
	go m.monitor(c, proc, log, true)
	return c, nil
}
