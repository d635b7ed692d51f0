package cri

import (
	"context"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-streaming/pkg/streaming"

	"github.com/hyperlet/hyperlet/pkg/agent"
	"github.com/hyperlet/hyperlet/pkg/sandbox"
)

// Runtime is what the CRI RuntimeService needs from pkg/sandbox.
type Runtime interface {
	RunPod(ctx context.Context, cfg *runtimeapi.PodSandboxConfig, handler string) (*sandbox.Pod, error)
	StopPod(ctx context.Context, id string) error
	RemovePod(ctx context.Context, id string) error
	Pod(id string) (*sandbox.Pod, error)
	Pods() []*sandbox.Pod
	PodContainers(podID string) []*sandbox.Container

	CreateContainer(ctx context.Context, podID string, cfg *runtimeapi.ContainerConfig) (*sandbox.Container, error)
	StartContainer(ctx context.Context, id string) error
	StopContainer(ctx context.Context, id string, timeout int64) error
	RemoveContainer(ctx context.Context, id string) error
	Container(id string) (*sandbox.Container, error)
	Containers() []*sandbox.Container
	Running(id string) error
	ExecSync(ctx context.Context, id string, cmd []string, timeout time.Duration) (*sandbox.ExecResult, error)
	UpdateResources(ctx context.Context, id string, r *runtimeapi.LinuxContainerResources) error
	ReopenLog(id string) error
	ContainerStats(ctx context.Context, id string) (*agent.ContainerStats, error)
	Subscribe() (<-chan *runtimeapi.ContainerEventResponse, func())
	VMStatus() sandbox.VMStatus
	streaming.Runtime
}

var _ Runtime = (*sandbox.Manager)(nil)

// WithRuntime sets the pod and container runtime.
func WithRuntime(r Runtime) Option { return func(s *Service) { s.runtime = r } }

// matchLabels reports whether labels contain every selector pair.
func matchLabels(labels, selector map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}
