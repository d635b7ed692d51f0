package cri

import (
	"context"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hyperlet/hyperlet/pkg/sandbox"
)

// What the CRI RuntimeService needs from pkg/sandbox, one small interface
// per concern; each CRI method uses the one it needs.

// Pods runs pod sandboxes.
type Pods interface {
	RunPod(ctx context.Context, cfg *runtimeapi.PodSandboxConfig, handler string) (*sandbox.Pod, error)
	StopPod(ctx context.Context, id string) error
	RemovePod(ctx context.Context, id string) error
	Pod(id string) (*sandbox.Pod, error)
	Pods() []*sandbox.Pod
	PodContainers(podID string) []*sandbox.Container
}

// Containers runs containers in pods.
type Containers interface {
	CreateContainer(ctx context.Context, podID string, cfg *runtimeapi.ContainerConfig) (*sandbox.Container, error)
	StartContainer(ctx context.Context, id string) error
	StopContainer(ctx context.Context, id string, timeout int64) error
	RemoveContainer(ctx context.Context, id string) error
	Container(id string) (*sandbox.Container, error)
	Containers() []*sandbox.Container
	UpdateResources(ctx context.Context, id string, r *runtimeapi.LinuxContainerResources) error
	ReopenLog(id string) error
}

// Processes runs commands in running containers.
type Processes interface {
	Running(id string) error
	ExecSync(ctx context.Context, id string, cmd []string, timeout time.Duration) (*sandbox.ExecResult, error)
}

// Stats reads containers' usage.
type Stats interface {
	ContainerStats(ctx context.Context, id string, openFiles bool) (*sandbox.ContainerStats, error)
}

// Events publishes container lifecycle events.
type Events interface {
	Subscribe() (<-chan *runtimeapi.ContainerEventResponse, func())
}

// VMs reports the VM templates and warm pool.
type VMs interface {
	VMStatus() sandbox.VMStatus
}

var (
	_ Pods       = (*sandbox.Manager)(nil)
	_ Containers = (*sandbox.Manager)(nil)
	_ Processes  = (*sandbox.Manager)(nil)
	_ Stats      = (*sandbox.Manager)(nil)
	_ Events     = (*sandbox.Manager)(nil)
	_ VMs        = (*sandbox.Manager)(nil)
)

// Runtime is everything the RuntimeService needs, as pkg/sandbox's
// Manager provides it.
type Runtime interface {
	Pods
	Containers
	Processes
	Stats
	Events
	VMs
}

// WithRuntime sets the pods, containers, processes, stats, events and VMs
// behind the RuntimeService from one runtime.
func WithRuntime(r Runtime) Option {
	return func(s *Service) {
		s.pods, s.ctrs, s.procs, s.stats, s.events, s.vms = r, r, r, r, r, r
	}
}

// matchLabels reports whether labels contain every selector pair.
func matchLabels(labels, selector map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}
