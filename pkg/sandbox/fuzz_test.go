package sandbox

import (
	"testing"

	"google.golang.org/protobuf/proto"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hyperlet/hyperlet/pkg/vm"
)

// FuzzPodConfig runs a RunPodSandbox request's checks and derivations on
// arbitrary pod configurations: errors, never panics, and a VM size that
// stays valid.
func FuzzPodConfig(f *testing.F) {
	for _, c := range []*runtime.PodSandboxConfig{
		{Metadata: &runtime.PodSandboxMetadata{Name: "p", Namespace: "n", Uid: "u"}},
		{Linux: &runtime.LinuxPodSandboxConfig{CgroupParent: "kubepods-besteffort-pod1.slice",
			Resources: &runtime.LinuxContainerResources{MemoryLimitInBytes: 1 << 40, CpuQuota: 1 << 40, CpuPeriod: 1}}},
		{Hostname: string(make([]byte, 300)), DnsConfig: &runtime.DNSConfig{Servers: []string{"1.1.1.1"}}},
	} {
		b, _ := proto.Marshal(c)
		f.Add(b)
	}
	m := &Manager{cfg: Config{MaxVCPUs: 4}}
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg := &runtime.PodSandboxConfig{}
		if proto.Unmarshal(b, cfg) != nil {
			return
		}
		if validatePod(cfg) != nil {
			return
		}
		c := vm.Config{VCPUs: 1, MemoryMiB: 256}
		m.sizeVM(&c, cfg)
		if c.VCPUs < 1 || c.VCPUs > 4 {
			t.Fatalf("%d vCPUs", c.VCPUs)
		}
		podOOMScoreAdj(cfg)
		podSetup(cfg, []string{"10.0.0.2"})
	})
}
