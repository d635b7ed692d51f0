package oci

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestProcessArgs(t *testing.T) {
	img := ImageConfig{Entrypoint: []string{"/entry"}, Cmd: []string{"cmd-arg"}}
	tests := []struct {
		name      string
		cmd, args []string
		img       ImageConfig
		want      []string
		wantErr   bool
	}{
		{"image defaults", nil, nil, img, []string{"/entry", "cmd-arg"}, false},
		{"args replace cmd", nil, []string{"a"}, img, []string{"/entry", "a"}, false},
		{"command replaces entrypoint and cmd", []string{"/bin/sh"}, nil, img, []string{"/bin/sh"}, false},
		{"command and args", []string{"/bin/sh"}, []string{"-c", "x"}, img, []string{"/bin/sh", "-c", "x"}, false},
		{"nothing to run", nil, nil, ImageConfig{}, nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := processArgs(&runtime.ContainerConfig{Command: tc.cmd, Args: tc.args}, tc.img)
			if (err != nil) != tc.wantErr || !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, %v; want %v (err %v)", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestUserSpec(t *testing.T) {
	tests := []struct {
		name  string
		sc    *runtime.LinuxContainerSecurityContext
		image string
		want  string
	}{
		{"image user", nil, "app:extra", "app:extra"},
		{"root by default", nil, "", ""},
		{"uid overrides image", &runtime.LinuxContainerSecurityContext{RunAsUser: &runtime.Int64Value{Value: 1000}}, "app", "1000"},
		{"username", &runtime.LinuxContainerSecurityContext{RunAsUsername: "nobody"}, "", "nobody"},
		{"group", &runtime.LinuxContainerSecurityContext{RunAsUser: &runtime.Int64Value{Value: 5}, RunAsGroup: &runtime.Int64Value{Value: 7}}, "", "5:7"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := userSpec(tc.sc, tc.image); got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestCapabilities(t *testing.T) {
	tests := []struct {
		name       string
		add, drop  []string
		privileged bool
		has, lacks []string
		wantErr    bool
	}{
		{"defaults", nil, nil, false, []string{"CAP_CHOWN", "CAP_KILL"}, []string{"CAP_SYS_ADMIN"}, false},
		{"add without prefix", []string{"sys_admin"}, nil, false, []string{"CAP_SYS_ADMIN"}, nil, false},
		{"drop", nil, []string{"CAP_KILL"}, false, []string{"CAP_CHOWN"}, []string{"CAP_KILL"}, false},
		{"drop all add one", []string{"NET_BIND_SERVICE"}, []string{"ALL"}, false, []string{"CAP_NET_BIND_SERVICE"}, []string{"CAP_CHOWN"}, false},
		{"privileged", nil, nil, true, []string{"CAP_SYS_ADMIN", "CAP_BPF"}, nil, false},
		{"unknown", []string{"CAP_BOGUS"}, nil, false, nil, nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sc := &runtime.LinuxContainerSecurityContext{Capabilities: &runtime.Capability{AddCapabilities: tc.add, DropCapabilities: tc.drop}}
			got, err := capabilities(sc, tc.privileged)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v", err)
			}
			for _, c := range tc.has {
				if !slices.Contains(got, c) {
					t.Errorf("missing %s in %v", c, got)
				}
			}
			for _, c := range tc.lacks {
				if slices.Contains(got, c) {
					t.Errorf("unexpected %s in %v", c, got)
				}
			}
		})
	}
}

func baseInput() Input {
	return Input{
		Config: &runtime.ContainerConfig{Metadata: &runtime.ContainerMetadata{Name: "c"}, Command: []string{"sh"},
			Linux: &runtime.LinuxContainerConfig{SecurityContext: &runtime.LinuxContainerSecurityContext{
				NamespaceOptions: &runtime.NamespaceOption{Pid: runtime.NamespaceMode_CONTAINER}}}},
		Sandbox: &runtime.PodSandboxConfig{},
		Image:   ImageConfig{Env: []string{"PATH=/bin", "A=image"}, WorkingDir: "/work"},
	}
}

func TestSpec(t *testing.T) {
	t.Run("env, cwd, defaults", func(t *testing.T) {
		in := baseInput()
		in.Config.Envs = []*runtime.KeyValue{{Key: "A", Value: []byte("cri")}, {Key: "B", Value: []byte("b")}}
		s, user, err := Spec(in)
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{"PATH=/bin", "A=cri", "B=b"}; !slices.Equal(s.Process.Env, want) {
			t.Errorf("env %v, want %v", s.Process.Env, want)
		}
		if s.Process.Cwd != "/work" || user != "" || s.Linux.Seccomp != nil || len(s.Linux.MaskedPaths) == 0 {
			t.Errorf("spec %+v user %q", s.Process, user)
		}
		if !hasNS(s, specs.PIDNamespace, "") || hasNS(s, specs.NetworkNamespace, "") {
			t.Errorf("namespaces %v", s.Linux.Namespaces)
		}
	})
	t.Run("runtime default seccomp, readonly rootfs, limits", func(t *testing.T) {
		in := baseInput()
		in.Config.Linux = &runtime.LinuxContainerConfig{
			SecurityContext: &runtime.LinuxContainerSecurityContext{
				Seccomp: &runtime.SecurityProfile{ProfileType: runtime.SecurityProfile_RuntimeDefault}, ReadonlyRootfs: true, NoNewPrivs: true,
				NamespaceOptions: &runtime.NamespaceOption{Pid: runtime.NamespaceMode_CONTAINER},
			},
			Resources: &runtime.LinuxContainerResources{MemoryLimitInBytes: 64 << 20, CpuQuota: 50000, CpuPeriod: 100000, OomScoreAdj: 500},
		}
		s, _, err := Spec(in)
		if err != nil {
			t.Fatal(err)
		}
		if s.Linux.Seccomp == nil || len(s.Linux.Seccomp.Syscalls) == 0 || !s.Root.Readonly || !s.Process.NoNewPrivileges {
			t.Errorf("security: %+v", s.Linux.Seccomp)
		}
		if *s.Linux.Resources.Memory.Limit != 64<<20 || *s.Linux.Resources.CPU.Quota != 50000 || *s.Process.OOMScoreAdj != 500 {
			t.Errorf("resources %+v", s.Linux.Resources)
		}
	})
	t.Run("localhost seccomp", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "p.json")
		os.WriteFile(f, []byte(`{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW"}]}`), 0o644)
		in := baseInput()
		in.Config.Linux = &runtime.LinuxContainerConfig{SecurityContext: &runtime.LinuxContainerSecurityContext{
			Seccomp: &runtime.SecurityProfile{ProfileType: runtime.SecurityProfile_Localhost, LocalhostRef: f}}}
		s, _, err := Spec(in)
		if err != nil || s.Linux.Seccomp == nil || s.Linux.Seccomp.DefaultAction != specs.ActErrno {
			t.Fatalf("%v %+v", err, s)
		}
		in.Config.Linux.SecurityContext.Seccomp.LocalhostRef = "relative.json"
		if _, _, err := Spec(in); !errors.Is(err, ErrInvalid) {
			t.Errorf("relative profile: %v", err)
		}
	})
	t.Run("shared pid namespace", func(t *testing.T) {
		in := baseInput()
		in.Config.Linux.SecurityContext.NamespaceOptions.Pid = runtime.NamespaceMode_POD
		s, _, _ := Spec(in)
		if !hasNS(s, specs.PIDNamespace, "pod") {
			t.Errorf("namespaces %v", s.Linux.Namespaces)
		}
	})
	t.Run("privileged needs a privileged pod", func(t *testing.T) {
		in := baseInput()
		in.Config.Linux = &runtime.LinuxContainerConfig{SecurityContext: &runtime.LinuxContainerSecurityContext{Privileged: true}}
		if _, _, err := Spec(in); !errors.Is(err, ErrInvalid) {
			t.Errorf("got %v", err)
		}
		in.Sandbox = &runtime.PodSandboxConfig{Linux: &runtime.LinuxPodSandboxConfig{SecurityContext: &runtime.LinuxSandboxSecurityContext{Privileged: true}}}
		s, _, err := Spec(in)
		if err != nil || len(s.Linux.MaskedPaths) != 0 || !slices.Contains(s.Process.Capabilities.Bounding, "CAP_SYS_ADMIN") {
			t.Errorf("privileged spec: %v %+v", err, s.Linux)
		}
	})
	t.Run("group without user", func(t *testing.T) {
		in := baseInput()
		in.Config.Linux.SecurityContext.RunAsGroup = &runtime.Int64Value{Value: 7}
		if _, _, err := Spec(in); !errors.Is(err, ErrInvalid) {
			t.Errorf("got %v", err)
		}
	})
	t.Run("pod user namespace", func(t *testing.T) {
		mapping := []*runtime.IDMapping{{ContainerId: 0, HostId: 1000, Length: 100000}}
		userns := &runtime.UserNamespace{Mode: runtime.NamespaceMode_POD, Uids: mapping, Gids: mapping}
		in := baseInput()
		in.Sandbox = &runtime.PodSandboxConfig{Linux: &runtime.LinuxPodSandboxConfig{SecurityContext: &runtime.LinuxSandboxSecurityContext{
			NamespaceOptions: &runtime.NamespaceOption{UsernsOptions: userns}}}}
		in.Config.Linux.SecurityContext.NamespaceOptions.UsernsOptions = userns
		s, _, err := Spec(in)
		if err != nil {
			t.Fatal(err)
		}
		if !hasNS(s, specs.UserNamespace, "pod") || !hasNS(s, specs.IPCNamespace, "pod") {
			t.Errorf("namespaces %v", s.Linux.Namespaces)
		}
		for _, m := range s.Mounts {
			if m.Destination == "/sys" && (m.Type != "bind" || !slices.Contains(m.Options, "ro")) {
				t.Errorf("/sys in a user namespace: %+v", m)
			}
		}
		// A container's mode must be its pod's.
		in.Config.Linux.SecurityContext.NamespaceOptions.UsernsOptions = &runtime.UserNamespace{Mode: runtime.NamespaceMode_NODE}
		if _, _, err := Spec(in); !errors.Is(err, ErrInvalid) {
			t.Errorf("container NODE in a POD pod: %v", err)
		}
		// No options at all is NODE, though NamespaceMode's zero is POD.
		s, _, err = Spec(baseInput())
		if err != nil || hasNS(s, specs.UserNamespace, "pod") {
			t.Errorf("no user namespace options: %v %v", err, s.Linux.Namespaces)
		}
	})
	t.Run("host namespaces", func(t *testing.T) {
		in := baseInput()
		in.Config.Linux = &runtime.LinuxContainerConfig{SecurityContext: &runtime.LinuxContainerSecurityContext{
			NamespaceOptions: &runtime.NamespaceOption{Network: runtime.NamespaceMode_NODE}}}
		if _, _, err := Spec(in); !errors.Is(err, ErrUnsupported) {
			t.Errorf("got %v", err)
		}
	})
}

func hasNS(s *specs.Spec, typ specs.LinuxNamespaceType, path string) bool {
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == typ && ns.Path == path {
			return true
		}
	}
	return false
}
