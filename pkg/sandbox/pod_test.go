package sandbox

import (
	"errors"
	"strings"
	"testing"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hyperlet/hyperlet/pkg/vm"
)

func TestSizeVM(t *testing.T) {
	res := func(mem, quota, period int64) *runtime.LinuxPodSandboxConfig {
		return &runtime.LinuxPodSandboxConfig{Resources: &runtime.LinuxContainerResources{MemoryLimitInBytes: mem, CpuQuota: quota, CpuPeriod: period}}
	}
	tests := []struct {
		name          string
		linux         *runtime.LinuxPodSandboxConfig
		maxCPU, maxMi int
		wantCPU       int
		wantMi        int
	}{
		{"base size", nil, 4, 0, 1, 256},
		{"limits add memory and CPUs", res(512<<20, 250000, 100000), 4, 0, 3, 768},
		{"overhead", &runtime.LinuxPodSandboxConfig{Overhead: &runtime.LinuxContainerResources{MemoryLimitInBytes: 64 << 20}}, 4, 0, 1, 320},
		{"caps", res(8<<30, 800000, 100000), 2, 1024, 2, 1024},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := &Manager{cfg: Config{MaxVCPUs: tc.maxCPU, MaxMemoryMiB: tc.maxMi}}
			c := vm.Config{VCPUs: 1, MemoryMiB: 256}
			m.sizeVM(&c, &runtime.PodSandboxConfig{Linux: tc.linux})
			if c.VCPUs != tc.wantCPU || c.MemoryMiB != tc.wantMi {
				t.Fatalf("got %d vCPUs %d MiB, want %d, %d", c.VCPUs, c.MemoryMiB, tc.wantCPU, tc.wantMi)
			}
		})
	}
}

func TestValidatePod(t *testing.T) {
	md := &runtime.PodSandboxMetadata{Name: "p", Namespace: "ns", Uid: "u"}
	ns := func(o *runtime.NamespaceOption) *runtime.LinuxPodSandboxConfig {
		return &runtime.LinuxPodSandboxConfig{SecurityContext: &runtime.LinuxSandboxSecurityContext{NamespaceOptions: o}}
	}
	tests := []struct {
		name string
		cfg  *runtime.PodSandboxConfig
		want error
	}{
		{"ok", &runtime.PodSandboxConfig{Metadata: md}, nil},
		{"no metadata", &runtime.PodSandboxConfig{}, ErrInvalid},
		{"no uid", &runtime.PodSandboxConfig{Metadata: &runtime.PodSandboxMetadata{Name: "p", Namespace: "ns"}}, ErrInvalid},
		{"host network", &runtime.PodSandboxConfig{Metadata: md, Linux: ns(&runtime.NamespaceOption{Network: runtime.NamespaceMode_NODE})}, ErrUnsupported},
		{"host pid", &runtime.PodSandboxConfig{Metadata: md, Linux: ns(&runtime.NamespaceOption{Pid: runtime.NamespaceMode_NODE})}, ErrUnsupported},
		{"host ipc", &runtime.PodSandboxConfig{Metadata: md, Linux: ns(&runtime.NamespaceOption{Ipc: runtime.NamespaceMode_NODE})}, ErrUnsupported},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := validatePod(tc.cfg); !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestPodSetup(t *testing.T) {
	s := podSetup(&runtime.PodSandboxConfig{
		Metadata:  &runtime.PodSandboxMetadata{Name: "web"},
		DnsConfig: &runtime.DNSConfig{Servers: []string{"1.1.1.1", "8.8.8.8"}, Searches: []string{"a.svc", "svc"}, Options: []string{"ndots:5"}},
		Linux:     &runtime.LinuxPodSandboxConfig{Sysctls: map[string]string{"net.ipv4.ip_unprivileged_port_start": "0"}},
	}, []string{"10.88.0.5"})
	if !strings.Contains(string(s.Hosts), "10.88.0.5\tweb\n") {
		t.Errorf("hosts %q", s.Hosts)
	}
	if s.Hostname != "web" || !s.SharePid || !s.SharedFs || s.Sysctls["net.ipv4.ip_unprivileged_port_start"] != "0" {
		t.Errorf("setup %+v", s)
	}
	if want := "nameserver 1.1.1.1\nnameserver 8.8.8.8\nsearch a.svc svc\noptions ndots:5\n"; string(s.ResolvConf) != want {
		t.Errorf("resolv.conf %q, want %q", s.ResolvConf, want)
	}
}

func TestLookup(t *testing.T) {
	all := map[string]*int{"abcdef": new(int), "abcxyz": new(int), "123": new(int)}
	tests := []struct {
		id   string
		want error
	}{
		{"abcdef", nil}, {"abcx", nil}, {"1", nil}, {"abc", ErrInvalid}, {"zzz", ErrNotFound}, {"", ErrInvalid},
	}
	for _, tc := range tests {
		if _, err := lookup(all, tc.id, "pod"); !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Errorf("lookup(%q) = %v, want %v", tc.id, err, tc.want)
		}
	}
}
