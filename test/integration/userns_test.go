package integration

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestCRIUserNamespaces: a pod with hostUsers: false gets one user
// namespace in its VM with kubelet's mapping, which all its containers
// share; its image is owned by the pod's root through an idmapped mount, so
// root in the container can write its rootfs; a pod without one sees the
// VM's own; and the mappings kubelet never sends are refused.
func TestCRIUserNamespaces(t *testing.T) {
	d := startCRI(t)
	ctx := testCtx(t, 4*time.Minute)
	d.pull(ctx)

	st, err := d.rs.Status(ctx, &runtimeapi.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range st.RuntimeHandlers {
		if h.Name == "" && !h.GetFeatures().GetUserNamespaces() {
			t.Errorf("the default handler does not advertise user namespaces: %v", h)
		}
	}

	mapping := []*runtimeapi.IDMapping{{ContainerId: 0, HostId: 1000, Length: 100000}}
	userns := &runtimeapi.NamespaceOption{UsernsOptions: &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_POD, Uids: mapping, Gids: mapping}}
	podCfg := podConfig("userns")
	podCfg.Linux.SecurityContext.NamespaceOptions = userns
	pod := d.runPod(ctx, podCfg)
	ctr := func(name string, cmd ...string) *runtimeapi.ContainerConfig {
		c := ctrConfig(name, cmd...)
		c.Linux = &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{NamespaceOptions: userns}}
		return c
	}
	ac := ctr("a", "sleep", "1000")
	ac.Mounts = []*runtimeapi.Mount{{ContainerPath: "/vol", Readonly: true, Image: &runtimeapi.ImageSpec{Image: testImage}}}
	a := d.createStart(ctx, pod, podCfg, ac)
	b := d.createStart(ctx, pod, podCfg, ctr("b", "sleep", "1000"))
	r, err := d.exec(ctx, a, 0, "sh", "-c", "cat /proc/self/uid_map /proc/self/gid_map; id -u; stat -c %u:%g /bin/busybox /vol/etc/passwd; echo x > /written && stat -c %u /written; readlink /proc/self/ns/user; readlink /proc/self/ns/ipc")
	if err != nil || r.ExitCode != 0 {
		t.Fatalf("exec in the user namespace: %v %v stderr %s", r, err, r.GetStderr())
	}
	lines := strings.Split(strings.TrimSpace(string(r.Stdout)), "\n")
	if len(lines) != 8 {
		t.Fatalf("output %q", r.Stdout)
	}
	for i, want := range []string{`^\s*0\s+1000\s+100000$`, `^\s*0\s+1000\s+100000$`} {
		if !matches(want, lines[i]) {
			t.Errorf("id map line %d = %q, want %s", i, lines[i], want)
		}
	}
	for i, want := range []string{"0", "0:0", "0:0", "0"} {
		if lines[2+i] != want {
			t.Errorf("line %d = %q, want %q (uid, image and image volume ownership, a written file's owner)", 2+i, lines[2+i], want)
		}
	}
	rb, err := d.exec(ctx, b, 0, "sh", "-c", "readlink /proc/self/ns/user; readlink /proc/self/ns/ipc")
	if err != nil || strings.Join(lines[6:], "\n")+"\n" != string(rb.Stdout) {
		t.Errorf("containers of one pod in different user or IPC namespaces: %q and %q (%v)", lines[6:], rb.GetStdout(), err)
	}

	// A pod in the VM's user namespace sees the whole identity mapping.
	plain := podConfig("userns-node")
	plain.Linux.SecurityContext.NamespaceOptions = &runtimeapi.NamespaceOption{UsernsOptions: &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_NODE}}
	ppod := d.runPod(ctx, plain)
	p := d.createStart(ctx, ppod, plain, ctrConfig("p", "sleep", "1000"))
	if r, err := d.exec(ctx, p, 0, "cat", "/proc/self/uid_map"); err != nil || !matches(`^\s+0\s+0\s+4294967295\n$`, string(r.Stdout)) {
		t.Errorf("NODE uid_map: %q %v", r.GetStdout(), err)
	}

	bad := map[string]*runtimeapi.UserNamespace{
		"two mappings": {Mode: runtimeapi.NamespaceMode_POD,
			Uids: []*runtimeapi.IDMapping{mapping[0], {ContainerId: 0, HostId: 2000, Length: 100000}}, Gids: mapping},
		"root unmapped": {Mode: runtimeapi.NamespaceMode_POD,
			Uids: []*runtimeapi.IDMapping{{ContainerId: 1, HostId: 1000, Length: 100000}}, Gids: mapping},
		"CONTAINER": {Mode: runtimeapi.NamespaceMode_CONTAINER},
		"TARGET":    {Mode: runtimeapi.NamespaceMode_TARGET},
	}
	for name, u := range bad {
		cfg := podConfig("userns-bad")
		cfg.Linux.SecurityContext.NamespaceOptions = &runtimeapi.NamespaceOption{UsernsOptions: u}
		_, err := d.rs.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
		wantCode(t, "user namespace "+name, err, codes.InvalidArgument)
	}
	for _, id := range []string{pod, ppod} {
		if _, err := d.rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
			t.Fatal(err)
		}
	}
}

func matches(re, s string) bool { return regexp.MustCompile(re).MatchString(s) }
