// Package nri connects hyperlet's pods and containers to NRI plugins
// (github.com/containerd/nri, the runtime side): it hosts the plugins'
// socket, relays the lifecycle events the sandbox manager reports through
// sandbox.Hooks, applies the plugins' adjustments to a container's spec
// before the container is made in its VM, and applies the resource updates
// they ask for to running containers.
//
// A plugin is as trusted as the runtime: it sees every pod and may change
// every container. The adjustments that make no sense inside a pod VM (OCI
// hooks, CDI devices, network devices, a cgroups path, RDT and block I/O
// classes) are refused, so that a plugin relying on one learns it failed.
package nri

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/containerd/nri/pkg/adaptation"
	api "github.com/containerd/nri/pkg/api"
	nrilog "github.com/containerd/nri/pkg/log"
	nrigen "github.com/containerd/nri/pkg/runtime-tools/generate"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	rgen "github.com/opencontainers/runtime-tools/generate"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"

	"github.com/hyperlet/hyperlet/pkg/sandbox"
)

// Config locates the plugins and bounds their calls.
type Config struct {
	// SocketPath is where external plugins connect.
	SocketPath string
	// PluginPath holds plugins started by hyperlet, PluginConfigPath their
	// configuration ("" for none).
	PluginPath, PluginConfigPath string
	// RegistrationTimeout and RequestTimeout bound a plugin's registration
	// and each of its hooks.
	RegistrationTimeout, RequestTimeout time.Duration
}

// State is what plugins synchronise with: the node's pods and containers,
// and the way to apply the resource updates they ask for.
type State interface {
	Pods() []*sandbox.Pod
	Containers() []*sandbox.Container
	ApplyResources(ctx context.Context, id string, r *runtime.LinuxContainerResources) error
}

// Runtime is the NRI runtime of one hyperlet daemon. It implements
// sandbox.Hooks.
type Runtime struct {
	a     *adaptation.Adaptation
	cfg   Config
	state State

	mu sync.Mutex
	// specs are the containers as the plugins were told of them at
	// creation (arguments, environment, mounts, resources), by ID; a
	// container created before a restart is described from its CRI config.
	specs map[string]*api.Container
}

var _ sandbox.Hooks = (*Runtime)(nil)

// New prepares the NRI runtime; Start serves plugins.
func New(cfg Config, version string) (*Runtime, error) {
	nrilog.Set(klogLogger{})
	adaptation.SetPluginRegistrationTimeout(cfg.RegistrationTimeout)
	adaptation.SetPluginRequestTimeout(cfg.RequestTimeout)
	r := &Runtime{cfg: cfg, specs: map[string]*api.Container{}}
	opts := []adaptation.Option{
		adaptation.WithSocketPath(cfg.SocketPath),
		adaptation.WithPluginPath(cfg.PluginPath),
		adaptation.WithPluginConfigPath(cfg.PluginConfigPath),
	}
	a, err := adaptation.New("hyperlet", version, r.synchronize, r.update, opts...)
	if err != nil {
		return nil, fmt.Errorf("nri: %w", err)
	}
	r.a = a
	return r, nil
}

// Start starts the plugins found in the plugin path and listens for
// external ones, synchronising each with state.
func (r *Runtime) Start(state State) error {
	r.state = state
	if err := r.a.Start(); err != nil {
		return fmt.Errorf("nri: %w", err)
	}
	if err := os.Chmod(r.cfg.SocketPath, 0o600); err != nil {
		r.a.Stop()
		return fmt.Errorf("nri: %w", err)
	}
	klog.InfoS("NRI plugins served", "socket", r.cfg.SocketPath, "pluginPath", r.cfg.PluginPath)
	return nil
}

// Stop disconnects the plugins and closes the socket.
func (r *Runtime) Stop() { r.a.Stop() }

// Block holds plugin synchronisation off until the returned function runs.
func (r *Runtime) Block() func() { return r.a.BlockPluginSync().Unblock }

// RunPodSandbox tells the plugins of a pod about to be ready.
func (r *Runtime) RunPodSandbox(ctx context.Context, p *sandbox.Pod) error {
	return r.a.RunPodSandbox(ctx, &api.RunPodSandboxRequest{Pod: podSandbox(p)})
}

// StopPodSandbox tells the plugins a pod is stopping, its containers stopped.
func (r *Runtime) StopPodSandbox(ctx context.Context, p *sandbox.Pod) error {
	return r.a.StopPodSandbox(ctx, &api.StopPodSandboxRequest{Pod: podSandbox(p)})
}

// RemovePodSandbox tells the plugins a pod is gone.
func (r *Runtime) RemovePodSandbox(ctx context.Context, p *sandbox.Pod) error {
	return r.a.RemovePodSandbox(ctx, &api.RemovePodSandboxRequest{Pod: podSandbox(p)})
}

// CreateContainer lets the plugins adjust a new container's spec, and
// applies the updates to other containers they ask for with it.
func (r *Runtime) CreateContainer(ctx context.Context, p *sandbox.Pod, c *sandbox.Container, spec *specs.Spec) error {
	ctr := containerFromSpec(c, spec)
	resp, err := r.a.CreateContainer(ctx, &api.CreateContainerRequest{Pod: podSandbox(p), Container: ctr})
	if err != nil {
		return err
	}
	if err := adjust(spec, resp.GetAdjust()); err != nil {
		return fmt.Errorf("apply the plugins' adjustment: %w", err)
	}
	r.mu.Lock()
	r.specs[c.ID()] = containerFromSpec(c, spec)
	r.mu.Unlock()
	r.evict(resp.GetEvict())
	if failed := r.apply(ctx, resp.GetUpdate()); len(failed) > 0 {
		klog.ErrorS(nil, "NRI updates to other containers failed", "container", c.ID(), "failed", len(failed))
	}
	return nil
}

// PostCreateContainer tells the plugins a container was created.
func (r *Runtime) PostCreateContainer(ctx context.Context, p *sandbox.Pod, c *sandbox.Container) error {
	return r.a.PostCreateContainer(ctx, &api.PostCreateContainerRequest{Pod: podSandbox(p), Container: r.container(c)})
}

// StartContainer tells the plugins a container is about to start.
func (r *Runtime) StartContainer(ctx context.Context, p *sandbox.Pod, c *sandbox.Container) error {
	return r.a.StartContainer(ctx, &api.StartContainerRequest{Pod: podSandbox(p), Container: r.container(c)})
}

// PostStartContainer tells the plugins a container started.
func (r *Runtime) PostStartContainer(ctx context.Context, p *sandbox.Pod, c *sandbox.Container) error {
	return r.a.PostStartContainer(ctx, &api.PostStartContainerRequest{Pod: podSandbox(p), Container: r.container(c)})
}

// UpdateContainer lets the plugins change the resources kubelet asks a
// container to get, and applies the updates to other containers they ask
// for with it.
func (r *Runtime) UpdateContainer(ctx context.Context, p *sandbox.Pod, c *sandbox.Container, res *runtime.LinuxContainerResources) (*runtime.LinuxContainerResources, error) {
	resp, err := r.a.UpdateContainer(ctx, &api.UpdateContainerRequest{
		Pod: podSandbox(p), Container: r.container(c), LinuxResources: nriResources(res),
	})
	if err != nil {
		return nil, err
	}
	var others []*api.ContainerUpdate
	for _, u := range resp.GetUpdate() {
		if u.GetContainerId() == c.ID() {
			res = criResources(res, u.GetLinux().GetResources())
			continue
		}
		others = append(others, u)
	}
	r.evict(resp.GetEvict())
	if failed := r.apply(ctx, others); len(failed) > 0 {
		klog.ErrorS(nil, "NRI updates to other containers failed", "container", c.ID(), "failed", len(failed))
	}
	return res, nil
}

// PostUpdateContainer tells the plugins a container's resources changed.
func (r *Runtime) PostUpdateContainer(ctx context.Context, p *sandbox.Pod, c *sandbox.Container) error {
	return r.a.PostUpdateContainer(ctx, &api.PostUpdateContainerRequest{Pod: podSandbox(p), Container: r.container(c)})
}

// StopContainer tells the plugins a container stopped, and applies the
// updates to other containers they ask for then.
func (r *Runtime) StopContainer(ctx context.Context, p *sandbox.Pod, c *sandbox.Container) error {
	resp, err := r.a.StopContainer(ctx, &api.StopContainerRequest{Pod: podSandbox(p), Container: r.container(c)})
	if err != nil {
		return err
	}
	if failed := r.apply(ctx, resp.GetUpdate()); len(failed) > 0 {
		klog.ErrorS(nil, "NRI updates after a container stop failed", "container", c.ID(), "failed", len(failed))
	}
	return nil
}

// RemoveContainer tells the plugins a container is gone.
func (r *Runtime) RemoveContainer(ctx context.Context, p *sandbox.Pod, c *sandbox.Container) error {
	err := r.a.RemoveContainer(ctx, &api.RemoveContainerRequest{Pod: podSandbox(p), Container: r.container(c)})
	r.mu.Lock()
	delete(r.specs, c.ID())
	r.mu.Unlock()
	return err
}

// container describes c as the plugins saw it created, in its current state.
func (r *Runtime) container(c *sandbox.Container) *api.Container {
	r.mu.Lock()
	base := r.specs[c.ID()]
	r.mu.Unlock()
	return withStatus(base, c)
}

// synchronize hands a newly registered plugin every pod and container.
// Steps that add either hold Block, so none is missed or half-made.
func (r *Runtime) synchronize(ctx context.Context, cb adaptation.SyncCB) error {
	var pods []*api.PodSandbox
	for _, p := range r.state.Pods() {
		pods = append(pods, podSandbox(p))
	}
	var ctrs []*api.Container
	for _, c := range r.state.Containers() {
		ctrs = append(ctrs, r.container(c))
	}
	updates, err := cb(ctx, pods, ctrs)
	if err != nil {
		return err
	}
	if failed := r.apply(ctx, updates); len(failed) > 0 {
		klog.ErrorS(nil, "NRI updates asked for at synchronisation failed", "failed", len(failed))
	}
	return nil
}

// update applies the updates a plugin asks for on its own.
func (r *Runtime) update(ctx context.Context, updates []*api.ContainerUpdate) ([]*api.ContainerUpdate, error) {
	return r.apply(ctx, updates), nil
}

// apply applies resource updates, returning those that failed and were
// not marked as allowed to.
func (r *Runtime) apply(ctx context.Context, updates []*api.ContainerUpdate) []*api.ContainerUpdate {
	var failed []*api.ContainerUpdate
	for _, u := range updates {
		id := u.GetContainerId()
		c, err := r.containerByID(id)
		if err == nil {
			res := criResources(c.Config().GetLinux().GetResources(), u.GetLinux().GetResources())
			err = r.state.ApplyResources(ctx, id, res)
		}
		if err != nil {
			klog.ErrorS(err, "NRI container update", "container", id, "ignoreFailure", u.GetIgnoreFailure())
			if !u.GetIgnoreFailure() {
				failed = append(failed, u)
			}
		}
	}
	return failed
}

func (r *Runtime) containerByID(id string) (*sandbox.Container, error) {
	for _, c := range r.state.Containers() {
		if c.ID() == id {
			return c, nil
		}
	}
	return nil, fmt.Errorf("container %q: %w", id, sandbox.ErrNotFound)
}

// evict logs evictions: kubelet, not the runtime, decides which pods go.
func (r *Runtime) evict(ev []*api.ContainerEviction) {
	for _, e := range ev {
		klog.InfoS("NRI plugin asked to evict a container; left to kubelet", "container", e.GetContainerId(), "reason", e.GetReason())
	}
}

// errUnsupported marks an adjustment a pod VM cannot honour.
var errUnsupported = errors.New("not supported in a pod VM")

// adjust applies a plugin adjustment to a spec whose bind mounts still
// name host paths (the sandbox manager shares them into the VM after).
func adjust(spec *specs.Spec, a *api.ContainerAdjustment) error {
	if a == nil {
		return nil
	}
	lx := a.GetLinux()
	switch {
	case len(a.GetHooks().GetPrestart()) > 0 || len(a.GetHooks().GetCreateRuntime()) > 0 ||
		len(a.GetHooks().GetCreateContainer()) > 0 || len(a.GetHooks().GetStartContainer()) > 0 ||
		len(a.GetHooks().GetPoststart()) > 0 || len(a.GetHooks().GetPoststop()) > 0:
		return fmt.Errorf("OCI hooks: %w", errUnsupported)
	case len(a.GetCDIDevices()) > 0:
		return fmt.Errorf("CDI devices: %w", errUnsupported)
	case len(lx.GetNetDevices()) > 0:
		return fmt.Errorf("network devices: %w", errUnsupported)
	case lx.GetCgroupsPath() != "":
		return fmt.Errorf("a cgroups path: %w", errUnsupported)
	case nonEmpty(lx.GetResources().GetBlockioClass()) || nonEmpty(lx.GetResources().GetRdtClass()) ||
		nonEmpty(lx.GetRdt().GetClosId()) || len(lx.GetRdt().GetSchemata().GetValue()) > 0:
		return fmt.Errorf("block I/O and RDT classes: %w", errUnsupported)
	}
	g := rgen.NewFromSpec(spec)
	return nrigen.SpecGenerator(&g).Adjust(a)
}

func nonEmpty(s *api.OptionalString) bool { return s.Get() != nil && *s.Get() != "" }

// klogLogger sends NRI's logs to klog.
type klogLogger struct{}

func (klogLogger) Debugf(_ context.Context, f string, a ...any) { klog.V(2).Infof("nri: "+f, a...) }
func (klogLogger) Infof(_ context.Context, f string, a ...any)  { klog.V(1).Infof("nri: "+f, a...) }
func (klogLogger) Warnf(_ context.Context, f string, a ...any)  { klog.Warningf("nri: "+f, a...) }
func (klogLogger) Errorf(_ context.Context, f string, a ...any) { klog.Errorf("nri: "+f, a...) }
