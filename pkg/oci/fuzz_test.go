package oci

import (
	"testing"

	"google.golang.org/protobuf/proto"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// FuzzSpec builds an OCI spec from arbitrary CRI container and pod
// configurations, as a CRI caller may send them: bad input is an error,
// never a panic.
func FuzzSpec(f *testing.F) {
	add := func(c *runtime.ContainerConfig, s *runtime.PodSandboxConfig) {
		cb, _ := proto.Marshal(c)
		sb, _ := proto.Marshal(s)
		f.Add(cb, sb)
	}
	add(&runtime.ContainerConfig{Metadata: &runtime.ContainerMetadata{Name: "c"}, Command: []string{"sh"}}, &runtime.PodSandboxConfig{})
	add(&runtime.ContainerConfig{Linux: &runtime.LinuxContainerConfig{SecurityContext: &runtime.LinuxContainerSecurityContext{
		RunAsGroup: &runtime.Int64Value{Value: 1}, Capabilities: &runtime.Capability{AddCapabilities: []string{"ALL"}, DropCapabilities: []string{"CAP_X"}},
		Seccomp: &runtime.SecurityProfile{ProfileType: runtime.SecurityProfile_Localhost, LocalhostRef: "/dev/zero"}},
		Resources: &runtime.LinuxContainerResources{CpuQuota: -1, MemoryLimitInBytes: -5}}},
		&runtime.PodSandboxConfig{Linux: &runtime.LinuxPodSandboxConfig{Sysctls: map[string]string{"a": "b"}}})
	f.Fuzz(func(t *testing.T, cb, sb []byte) {
		c, s := &runtime.ContainerConfig{}, &runtime.PodSandboxConfig{}
		if proto.Unmarshal(cb, c) != nil || proto.Unmarshal(sb, s) != nil {
			return
		}
		if ref := c.GetLinux().GetSecurityContext().GetSeccomp().GetLocalhostRef(); ref != "" && ref != "/dev/zero" {
			// Only /dev/zero among host files: the fuzzer must not read the
			// node at random.
			c.Linux.SecurityContext.Seccomp.LocalhostRef = "/dev/zero"
		}
		Spec(Input{Config: c, Sandbox: s})
	})
}
