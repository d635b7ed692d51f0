package sandbox

import (
	"context"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Hooks are called at the points of the pod and container lifecycle where
// NRI plugins hook in (pkg/nri), in the order the NRI specification gives.
// An error from a hook that precedes a step (RunPodSandbox, CreateContainer,
// StartContainer, UpdateContainer) fails the step, which is then undone; the
// others are notifications, and their errors are logged.
type Hooks interface {
	// Block holds plugins' synchronisation off while a step changes what
	// it would list, so that a plugin connecting meanwhile misses nothing.
	Block() (unblock func())
	RunPodSandbox(ctx context.Context, p *Pod) error
	StopPodSandbox(ctx context.Context, p *Pod) error
	RemovePodSandbox(ctx context.Context, p *Pod) error
	// CreateContainer may adjust the container's spec, whose bind mounts
	// name host paths at this point.
	CreateContainer(ctx context.Context, p *Pod, c *Container, spec *specs.Spec) error
	PostCreateContainer(ctx context.Context, p *Pod, c *Container) error
	StartContainer(ctx context.Context, p *Pod, c *Container) error
	PostStartContainer(ctx context.Context, p *Pod, c *Container) error
	// UpdateContainer returns the resources to apply, which plugins may
	// have changed.
	UpdateContainer(ctx context.Context, p *Pod, c *Container, r *runtime.LinuxContainerResources) (*runtime.LinuxContainerResources, error)
	PostUpdateContainer(ctx context.Context, p *Pod, c *Container) error
	StopContainer(ctx context.Context, p *Pod, c *Container) error
	RemoveContainer(ctx context.Context, p *Pod, c *Container) error
}

// noHooks is the Hooks of a node without NRI.
type noHooks struct{}

func (noHooks) Block() func()                                               { return func() {} }
func (noHooks) RunPodSandbox(context.Context, *Pod) error                   { return nil }
func (noHooks) StopPodSandbox(context.Context, *Pod) error                  { return nil }
func (noHooks) RemovePodSandbox(context.Context, *Pod) error                { return nil }
func (noHooks) PostCreateContainer(context.Context, *Pod, *Container) error { return nil }
func (noHooks) StartContainer(context.Context, *Pod, *Container) error      { return nil }
func (noHooks) PostStartContainer(context.Context, *Pod, *Container) error  { return nil }
func (noHooks) PostUpdateContainer(context.Context, *Pod, *Container) error { return nil }
func (noHooks) StopContainer(context.Context, *Pod, *Container) error       { return nil }
func (noHooks) RemoveContainer(context.Context, *Pod, *Container) error     { return nil }
func (noHooks) CreateContainer(context.Context, *Pod, *Container, *specs.Spec) error {
	return nil
}
func (noHooks) UpdateContainer(_ context.Context, _ *Pod, _ *Container, r *runtime.LinuxContainerResources) (*runtime.LinuxContainerResources, error) {
	return r, nil
}
