package integration

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
	"github.com/hyperlet/hyperlet/pkg/agent"
	"github.com/hyperlet/hyperlet/pkg/oci"
	"github.com/hyperlet/hyperlet/pkg/vm"
)

// busyboxDisk builds an EROFS image holding a busybox userland with a user
// and groups, as an image disk would.
func busyboxDisk(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	for _, d := range []string{"bin", "etc", "tmp", "proc", "sys", "dev"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("busybox-static: %v", err)
	}
	os.WriteFile(filepath.Join(root, "bin/busybox"), bb, 0o755)
	for _, a := range []string{"sh", "echo", "cat", "id", "sleep", "hostname", "awk", "head", "ls"} {
		os.Symlink("busybox", filepath.Join(root, "bin", a))
	}
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\napp:x:1000:\nextra:x:2000:app\n"), 0o644)
	img := filepath.Join(dir, "image.erofs")
	if out, err := exec.Command("mkfs.erofs", "--quiet", img, root).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.erofs (erofs-utils): %v\n%s", err, out)
	}
	return img
}

// podVM boots a VM with the image disk mounted and the pod set up.
func podVM(t *testing.T, ctx context.Context) *testVM {
	t.Helper()
	img := busyboxDisk(t)
	v := bootVM(t)
	addr, err := v.AddDisk(ctx, vm.Disk{ID: "img", Path: img, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.client.MountImage(ctx, "img", uint32(addr.Target), uint32(addr.LUN)); err != nil {
		t.Fatal(err)
	}
	if err := v.client.SetupPod(ctx, &agent.PodSetup{
		Hostname:   "pod-one",
		Hosts:      []byte("127.0.0.1 localhost\n"),
		ResolvConf: []byte("nameserver 10.0.0.10\nsearch ns.svc.cluster.local\n"),
		SharePid:   true,
	}); err != nil {
		t.Fatal(err)
	}
	return v
}

func createContainer(t *testing.T, ctx context.Context, v *testVM, id string, cfg *runtime.ContainerConfig) {
	t.Helper()
	spec, user, err := oci.Spec(oci.Input{Config: cfg, Sandbox: &runtime.PodSandboxConfig{}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.client.CreateContainer(ctx, agent.ContainerCreate{ID: id, ImageID: "img", User: user, Spec: spec}); err != nil {
		t.Fatal(err)
	}
}

func runContainer(t *testing.T, ctx context.Context, v *testVM, id string) (string, *agent.ExitStatus) {
	t.Helper()
	p, err := v.client.StartContainer(ctx, id, false)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if _, err := p.CopyOutput(ctx, agentapi.Stream_STDOUT, 0, &out); err != nil {
		t.Fatal(err)
	}
	var errb bytes.Buffer
	p.CopyOutput(ctx, agentapi.Stream_STDERR, 0, &errb)
	st, err := p.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if errb.Len() > 0 {
		t.Logf("%s stderr: %s", id, errb.String())
	}
	return out.String(), st
}

// TestContainerInVM runs containers with runc inside a pod VM from an image
// disk: user and groups from the image, pod hostname and DNS, a default
// seccomp profile, exec, and an OOM kill reported as such.
func TestContainerInVM(t *testing.T) {
	ctx := testCtx(t, 4*time.Minute)
	v := podVM(t, ctx)

	createContainer(t, ctx, v, "c1", &runtime.ContainerConfig{
		Metadata: &runtime.ContainerMetadata{Name: "c1"},
		Command:  []string{"sh", "-c", "id; hostname; cat /etc/resolv.conf; grep Seccomp: /proc/self/status; echo $HOME"},
		Linux: &runtime.LinuxContainerConfig{SecurityContext: &runtime.LinuxContainerSecurityContext{
			RunAsUsername: "app",
			Seccomp:       &runtime.SecurityProfile{ProfileType: runtime.SecurityProfile_RuntimeDefault},
		}},
	})
	out, st := runContainer(t, ctx, v, "c1")
	for _, want := range []string{"uid=1000(app) gid=1000(app) groups=1000(app),2000(extra)", "pod-one", "nameserver 10.0.0.10", "Seccomp:\t2", "/home/app"} {
		if !strings.Contains(out, want) {
			t.Errorf("c1 output lacks %q:\n%s", want, out)
		}
	}
	if st.ExitCode != 0 {
		t.Errorf("c1 exit %d", st.ExitCode)
	}
	if err := v.client.RemoveContainer(ctx, "c1"); err != nil {
		t.Fatal(err)
	}

	// A long-running container, exec into it, then stop it with SIGTERM.
	createContainer(t, ctx, v, "c2", &runtime.ContainerConfig{
		Metadata: &runtime.ContainerMetadata{Name: "c2"},
		Command:  []string{"sh", "-c", "trap 'exit 7' TERM; echo started > /tmp/state; while true; do sleep 0.1; done"},
	})
	p, err := v.client.StartContainer(ctx, "c2", false)
	if err != nil {
		t.Fatal(err)
	}
	var execOut, execErr bytes.Buffer
	xp, err := v.client.Exec(ctx, "c2", "x1", &specs.Process{Args: []string{"sh", "-c", "cat /tmp/state; echo $$"}}, false, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	xp.CopyOutput(ctx, agentapi.Stream_STDOUT, 0, &execOut)
	xp.CopyOutput(ctx, agentapi.Stream_STDERR, 0, &execErr)
	xst, err := xp.Wait(ctx)
	if err != nil || xst.ExitCode != 0 || !strings.HasPrefix(execOut.String(), "started\n") {
		t.Fatalf("exec: %v, exit %v, out %q err %q", err, xst, execOut.String(), execErr.String())
	}
	if err := p.Signal(ctx, 15); err != nil {
		t.Fatal(err)
	}
	st, err = p.Wait(ctx)
	if err != nil || st.ExitCode != 7 {
		t.Fatalf("c2 after SIGTERM: %v %+v", err, st)
	}
	stats, err := v.client.Stats(ctx, "c2", true)
	if err != nil {
		t.Fatal(err)
	}
	if stats.WritableLayerBytes == 0 {
		t.Errorf("writable layer of c2 is empty: %+v", stats)
	}
	v.client.RemoveContainer(ctx, "c2")

	// OOM: a 32 MiB limit and a process that grows without bound.
	createContainer(t, ctx, v, "oom", &runtime.ContainerConfig{
		Metadata: &runtime.ContainerMetadata{Name: "oom"},
		Command:  []string{"awk", "BEGIN { s = \"xxxxxxxxxxxxxxxx\"; while (1) s = s s }"},
		Linux: &runtime.LinuxContainerConfig{Resources: &runtime.LinuxContainerResources{
			MemoryLimitInBytes: 32 << 20,
		}},
	})
	_, st = runContainer(t, ctx, v, "oom")
	if st.ExitCode != 137 || !st.OomKilled {
		t.Fatalf("oom container: %+v", st)
	}
	v.client.RemoveContainer(ctx, "oom")
	// The VM lives on.
	if _, err := v.client.Version(ctx); err != nil {
		t.Fatal(err)
	}
}
