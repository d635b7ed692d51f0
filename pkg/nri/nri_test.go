package nri

import (
	"errors"
	"slices"
	"testing"

	api "github.com/containerd/nri/pkg/api"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func baseSpec() *specs.Spec {
	return &specs.Spec{
		Process: &specs.Process{Args: []string{"sleep", "1"}, Env: []string{"PATH=/bin", "A=1"}},
		Mounts:  []specs.Mount{{Destination: "/proc", Type: "proc", Source: "proc"}},
		Linux:   &specs.Linux{Resources: &specs.LinuxResources{}},
	}
}

func TestAdjust(t *testing.T) {
	for _, tc := range []struct {
		name  string
		adj   *api.ContainerAdjustment
		err   error
		check func(t *testing.T, s *specs.Spec)
	}{
		{name: "nothing", adj: nil, check: func(t *testing.T, s *specs.Spec) {}},
		{
			name: "env, annotations, mounts, memory",
			adj: &api.ContainerAdjustment{
				Env:         []*api.KeyValue{{Key: "A", Value: "2"}, {Key: "B", Value: "3"}},
				Annotations: map[string]string{"nri": "yes"},
				Mounts:      []*api.Mount{{Destination: "/data", Source: "/srv/data", Type: "bind", Options: []string{"rbind", "ro"}}},
				Linux:       &api.LinuxContainerAdjustment{Resources: &api.LinuxResources{Memory: &api.LinuxMemory{Limit: api.Int64(64 << 20)}}},
			},
			check: func(t *testing.T, s *specs.Spec) {
				if !slices.Contains(s.Process.Env, "A=2") || !slices.Contains(s.Process.Env, "B=3") || slices.Contains(s.Process.Env, "A=1") {
					t.Errorf("env %v", s.Process.Env)
				}
				if s.Annotations["nri"] != "yes" {
					t.Errorf("annotations %v", s.Annotations)
				}
				if !slices.ContainsFunc(s.Mounts, func(m specs.Mount) bool { return m.Destination == "/data" && m.Source == "/srv/data" }) {
					t.Errorf("mounts %v", s.Mounts)
				}
				if l := s.Linux.Resources.Memory; l == nil || l.Limit == nil || *l.Limit != 64<<20 {
					t.Errorf("memory %+v", l)
				}
			},
		},
		{name: "removed env", adj: &api.ContainerAdjustment{Env: []*api.KeyValue{{Key: "-A"}}},
			check: func(t *testing.T, s *specs.Spec) {
				if slices.Contains(s.Process.Env, "A=1") {
					t.Errorf("env %v", s.Process.Env)
				}
			}},
		{name: "OCI hooks", adj: &api.ContainerAdjustment{Hooks: &api.Hooks{Prestart: []*api.Hook{{Path: "/bin/true"}}}}, err: errUnsupported},
		{name: "CDI devices", adj: &api.ContainerAdjustment{CDIDevices: []*api.CDIDevice{{Name: "vendor.com/gpu=0"}}}, err: errUnsupported},
		{name: "cgroups path", adj: &api.ContainerAdjustment{Linux: &api.LinuxContainerAdjustment{CgroupsPath: "/x"}}, err: errUnsupported},
		{name: "RDT class", adj: &api.ContainerAdjustment{Linux: &api.LinuxContainerAdjustment{Resources: &api.LinuxResources{RdtClass: api.String("gold")}}}, err: errUnsupported},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := baseSpec()
			err := adjust(s, tc.adj)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("adjust = %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, s)
		})
	}
}

func TestCRIResources(t *testing.T) {
	base := &runtime.LinuxContainerResources{CpuShares: 512, MemoryLimitInBytes: 128 << 20, CpusetCpus: "0"}
	for _, tc := range []struct {
		name string
		u    *api.LinuxResources
		want *runtime.LinuxContainerResources
	}{
		{"no update keeps the base", nil, &runtime.LinuxContainerResources{CpuShares: 512, MemoryLimitInBytes: 128 << 20, CpusetCpus: "0"}},
		{"cpu and memory", &api.LinuxResources{
			Cpu:    &api.LinuxCPU{Quota: api.Int64(50000), Period: api.UInt64(100000), Cpus: "1"},
			Memory: &api.LinuxMemory{Limit: api.Int64(256 << 20)},
		}, &runtime.LinuxContainerResources{CpuShares: 512, CpuQuota: 50000, CpuPeriod: 100000, CpusetCpus: "1", MemoryLimitInBytes: 256 << 20}},
		{"unified keys stay in the cgroup", &api.LinuxResources{Unified: map[string]string{"memory.high": "1M", "../x": "1"}},
			&runtime.LinuxContainerResources{CpuShares: 512, MemoryLimitInBytes: 128 << 20, CpusetCpus: "0", Unified: map[string]string{"memory.high": "1M"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := criResources(base, tc.u)
			if got.String() != tc.want.String() {
				t.Errorf("criResources = %v, want %v", got, tc.want)
			}
		})
	}
	if base.CpusetCpus != "0" {
		t.Error("criResources changed its base")
	}
}
