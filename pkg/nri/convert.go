package nri

import (
	"strings"

	api "github.com/containerd/nri/pkg/api"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hyperlet/hyperlet/pkg/oci"
	"github.com/hyperlet/hyperlet/pkg/sandbox"
)

// podSandbox describes a pod to plugins.
func podSandbox(p *sandbox.Pod) *api.PodSandbox {
	cfg := p.Config()
	md := cfg.GetMetadata()
	_, _, handler := p.Snapshot()
	lx := cfg.GetLinux()
	return &api.PodSandbox{
		Id: p.ID(), Name: md.GetName(), Uid: md.GetUid(), Namespace: md.GetNamespace(),
		Labels: cfg.GetLabels(), Annotations: cfg.GetAnnotations(), RuntimeHandler: handler,
		Linux: &api.LinuxPodSandbox{
			CgroupParent: lx.GetCgroupParent(),
			PodOverhead:  nriResources(lx.GetOverhead()),
			PodResources: nriResources(lx.GetResources()),
		},
		Ips: p.IPs(),
	}
}

// containerFromSpec describes a container by its spec (at creation).
func containerFromSpec(c *sandbox.Container, spec *specs.Spec) *api.Container {
	out := &api.Container{
		Id: c.ID(), PodSandboxId: c.PodID(), Name: c.Config().GetMetadata().GetName(),
		Labels: c.Config().GetLabels(), Annotations: spec.Annotations,
		Mounts: api.FromOCIMounts(spec.Mounts), Hooks: api.FromOCIHooks(spec.Hooks),
	}
	if pr := spec.Process; pr != nil {
		out.Args, out.Env = pr.Args, pr.Env
		for _, l := range pr.Rlimits {
			out.Rlimits = append(out.Rlimits, &api.POSIXRlimit{Type: l.Type, Hard: l.Hard, Soft: l.Soft})
		}
	}
	if lx := spec.Linux; lx != nil {
		out.Linux = &api.LinuxContainer{
			Namespaces: api.FromOCILinuxNamespaces(lx.Namespaces),
			Devices:    api.FromOCILinuxDevices(lx.Devices),
			Resources:  api.FromOCILinuxResources(lx.Resources, nil),
			Sysctl:     lx.Sysctl,
		}
		if pr := spec.Process; pr != nil && pr.OOMScoreAdj != nil {
			out.Linux.OomScoreAdj = api.Int(*pr.OOMScoreAdj)
		}
	}
	return withStatus(out, c)
}

// withStatus is base (or, without one, a description from the CRI config)
// with the container's current state.
func withStatus(base *api.Container, c *sandbox.Container) *api.Container {
	var out *api.Container
	if base != nil {
		out = proto.Clone(base).(*api.Container)
	} else {
		cfg := c.Config()
		out = &api.Container{
			Id: c.ID(), PodSandboxId: c.PodID(), Name: cfg.GetMetadata().GetName(),
			Labels: cfg.GetLabels(), Annotations: cfg.GetAnnotations(),
			Args:  append(append([]string{}, cfg.GetCommand()...), cfg.GetArgs()...),
			Linux: &api.LinuxContainer{Resources: nriResources(cfg.GetLinux().GetResources())},
		}
		for _, kv := range cfg.GetEnvs() {
			out.Env = append(out.Env, kv.GetKey()+"="+string(kv.GetValue()))
		}
		for _, m := range cfg.GetMounts() {
			opts := []string{"rbind"}
			if m.GetReadonly() {
				opts = append(opts, "ro")
			}
			out.Mounts = append(out.Mounts, &api.Mount{Destination: m.GetContainerPath(), Source: m.GetHostPath(), Type: "bind", Options: opts})
		}
	}
	st := c.Status()
	out.State = containerState(st.State)
	out.Pid = st.Pid
	out.CreatedAt, out.StartedAt, out.FinishedAt = st.CreatedAt, st.StartedAt, st.FinishedAt
	out.ExitCode, out.StatusReason, out.StatusMessage = st.ExitCode, st.Reason, st.Message
	if u := st.User; u != nil {
		out.User = &api.User{Uid: u.UID, Gid: u.GID, AdditionalGids: u.AdditionalGids}
	}
	return out
}

func containerState(s runtime.ContainerState) api.ContainerState {
	switch s {
	case runtime.ContainerState_CONTAINER_CREATED:
		return api.ContainerState_CONTAINER_CREATED
	case runtime.ContainerState_CONTAINER_RUNNING:
		return api.ContainerState_CONTAINER_RUNNING
	case runtime.ContainerState_CONTAINER_EXITED:
		return api.ContainerState_CONTAINER_STOPPED
	}
	return api.ContainerState_CONTAINER_UNKNOWN
}

// nriResources are CRI resources as NRI's.
func nriResources(r *runtime.LinuxContainerResources) *api.LinuxResources {
	if r == nil {
		return nil
	}
	return api.FromOCILinuxResources(oci.Resources(r), nil)
}

// criResources are base with the fields an NRI update sets replaced.
func criResources(base *runtime.LinuxContainerResources, u *api.LinuxResources) *runtime.LinuxContainerResources {
	out := &runtime.LinuxContainerResources{}
	if base != nil {
		out = proto.Clone(base).(*runtime.LinuxContainerResources)
	}
	if u == nil {
		return out
	}
	if cpu := u.GetCpu(); cpu != nil {
		if v := cpu.GetShares().Get(); v != nil {
			out.CpuShares = int64(*v)
		}
		if v := cpu.GetQuota().Get(); v != nil {
			out.CpuQuota = *v
		}
		if v := cpu.GetPeriod().Get(); v != nil {
			out.CpuPeriod = int64(*v)
		}
		if cpu.GetCpus() != "" {
			out.CpusetCpus = cpu.GetCpus()
		}
		if cpu.GetMems() != "" {
			out.CpusetMems = cpu.GetMems()
		}
	}
	if mem := u.GetMemory(); mem != nil {
		if v := mem.GetLimit().Get(); v != nil {
			out.MemoryLimitInBytes = *v
		}
		if v := mem.GetSwap().Get(); v != nil {
			out.MemorySwapLimitInBytes = *v
		}
	}
	for _, h := range u.GetHugepageLimits() {
		out.HugepageLimits = append(out.HugepageLimits, &runtime.HugepageLimit{PageSize: h.GetPageSize(), Limit: h.GetLimit()})
	}
	for k, v := range u.GetUnified() {
		if out.Unified == nil {
			out.Unified = map[string]string{}
		}
		// A key names a cgroup v2 file of the container's own cgroup.
		if !strings.ContainsAny(k, "/\x00") {
			out.Unified[k] = v
		}
	}
	return out
}
