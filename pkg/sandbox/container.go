package sandbox

import (
	"errors"
	"fmt"
	"sync"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hyperlet/hyperlet/pkg/agent"
	"github.com/hyperlet/hyperlet/pkg/crilog"
)

// containerRecord is what survives a daemon restart.
type containerRecord struct {
	ID       string `json:"id"`
	PodID    string `json:"podId"`
	Config   []byte `json:"config"` // runtime.ContainerConfig, protobuf
	ImageID  string `json:"imageId"`
	ImageRef string `json:"imageRef"`
	// VolumeImages are the IDs of the images of its image volumes, in the
	// order of those mounts; each is pinned while the container exists.
	VolumeImages []string               `json:"volumeImages,omitempty"`
	LogPath      string                 `json:"logPath,omitempty"`
	State        runtime.ContainerState `json:"state"`
	CreatedAt    int64                  `json:"createdAt"`
	StartedAt    int64                  `json:"startedAt,omitempty"`
	FinishedAt   int64                  `json:"finishedAt,omitempty"`
	ExitCode     int32                  `json:"exitCode"`
	Reason       string                 `json:"reason,omitempty"`
	Message      string                 `json:"message,omitempty"`
	Pid          uint32                 `json:"pid,omitempty"`
	// User is the identity the container's process runs with, as the
	// guest resolved it against the image (reported, never acted on).
	User *specs.User `json:"user,omitempty"`
	// Intent is set while a step whose effect in the guest outlives a
	// daemon crash is under way (IntentCreate, IntentStart); a restarted
	// daemon finishes or undoes the step from it.
	Intent string `json:"intent,omitempty"`
}

// Container intents.
const (
	IntentCreate = "create" // the guest may have the container; the host may have its volumes
	IntentStart  = "start"  // the guest may be running it
)

// Container is one container of a pod.
type Container struct {
	m   *Manager
	pod *Pod
	cfg *runtime.ContainerConfig // as created; never changed

	// op serialises start and resource updates, which wait on the guest;
	// mu guards the fields below and is only held briefly, so status and
	// list calls never wait on the guest.
	op        sync.Mutex
	mu        sync.Mutex
	rec       containerRecord
	resources *runtime.LinuxContainerResources // set by UpdateResources
	removed   bool                             // its record is deleted
	release   func()                           // unpins the image
	done      chan struct{}                    // closed once a started container's exit is recorded
	log       *crilog.File
	proc      *agent.Process
	outs      [2]*fanout // attached clients, by agentapi.Stream

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

// Config is the container's CRI configuration, with its current resources.
func (c *Container) Config() *runtime.ContainerConfig {
	c.mu.Lock()
	r := c.resources
	c.mu.Unlock()
	if r == nil {
		return c.cfg
	}
	cfg := proto.Clone(c.cfg).(*runtime.ContainerConfig)
	if cfg.Linux == nil {
		cfg.Linux = &runtime.LinuxContainerConfig{}
	}
	cfg.Linux.Resources = r
	return cfg
}

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

// persistLocked writes the record; the caller holds c.mu. A removed
// container's record stays gone.
func (c *Container) persistLocked() error {
	if c.removed {
		return nil
	}
	return c.m.db.put(containersBucket, c.rec.ID, &c.rec)
}

func (m *Manager) event(c *Container, t runtime.ContainerEventType) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m.eventLocked(c, t)
}

// eventLocked publishes an event for c, whose mu the caller holds: events
// of one container go out in the order of its state changes.
func (m *Manager) eventLocked(c *Container, t runtime.ContainerEventType) {
	m.events.publish(&runtime.ContainerEventResponse{
		ContainerId:        c.rec.ID,
		ContainerEventType: t,
		CreatedAt:          time.Now().UnixNano(),
		PodSandboxStatus:   &runtime.PodSandboxStatus{Id: c.rec.PodID},
	})
}

// lockContainer returns a container of a ready pod, with its lifecycle lock
// held (the caller unlocks c.op), and the pod's agent.
func (m *Manager) lockContainer(id string) (*Container, *agent.Client, error) {
	c, err := m.Container(id)
	if err != nil {
		return nil, nil, err
	}
	client, err := c.pod.client()
	if err != nil {
		return nil, nil, err
	}
	c.op.Lock()
	return c, client, nil
}

// lockExisting returns a container with its lifecycle lock held (the
// caller unlocks c.op), or nil and no error if there is none: stopping and
// removing a missing container succeed.
func (m *Manager) lockExisting(id string) (*Container, error) {
	c, err := m.Container(id)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	c.op.Lock()
	return c, nil
}
