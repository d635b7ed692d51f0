package integration

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hyperlet/hyperlet/internal/testcontainerd"
	"github.com/hyperlet/hyperlet/pkg/imageservice/imagetest"
)

// hostContainerd is Debian's containerd with its CRI plugin and runc, as a
// node that runs hyperlet has it, in directories of its own.
type hostContainerd struct {
	dir, socket string
	cmd         *exec.Cmd
	log         *lockedBuffer
}

// startContainerd runs containerd for the host runtime: its pause image is
// a busybox that sleeps, from the test registry, which mirrors
// registry.k8s.io as hyperlet's does.
func startContainerd(t *testing.T, dir, registry, cniDir string) *hostContainerd {
	t.Helper()
	bin, err := exec.LookPath("containerd")
	if err != nil {
		t.Fatalf("the host runtime tests need Debian's containerd (hack/install-deps.sh): %v", err)
	}
	conf := testcontainerd.Config{Dir: dir, SandboxImage: "registry.k8s.io/hyperlet-test/pause:1", CNIConfDir: cniDir,
		Mirrors: map[string]string{"registry.k8s.io": registry}}
	confPath, err := conf.Write()
	if err != nil {
		t.Fatal(err)
	}
	c := &hostContainerd{dir: dir, socket: conf.Socket(), log: &lockedBuffer{}}
	c.cmd = exec.Command(bin, "--config", confPath)
	c.cmd.Stdout, c.cmd.Stderr = c.log, c.log
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		if conn, err := net.Dial("unix", c.socket); err == nil {
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd did not start:\n%s", c.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Cleanup(func() {
		c.stop()
		// Its containers' shims outlive it: end them and what they run.
		exec.Command("sh", "-c", "pkill -9 -f -- '-address "+c.socket+"'").Run()
		unmountUnder(filepath.Join(dir, "state"))
		if t.Failed() {
			t.Logf("containerd log:\n%s", c.log)
		}
	})
	return c
}

// startWithHostRuntime starts hyperlet with a containerd of its own as the
// host runtime, on hyperlet's pod network.
func startWithHostRuntime(t *testing.T) (*criDaemon, *hostContainerd) {
	t.Helper()
	cdir := runDir(t)
	sock := filepath.Join(cdir, "containerd.sock")
	d := startCRI(t, "host_runtime.enabled = true", fmt.Sprintf("host_runtime.endpoint = %q", sock))
	d.reg.Push(t, "hyperlet-test/pause:1", sleeperImage(t))
	return d, startContainerd(t, cdir, d.reg.Host, filepath.Join(d.dir, "cni"))
}

func (c *hostContainerd) stop() {
	if c.cmd != nil {
		c.cmd.Process.Signal(syscall.SIGTERM)
		c.cmd.Wait()
		c.cmd = nil
	}
}

func hostNetworkPod(name string) *runtimeapi.PodSandboxConfig {
	cfg := podConfig(name)
	cfg.Linux.SecurityContext.NamespaceOptions = &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}
	cfg.Hostname = "" // the node's, as kubelet sends it for hostNetwork pods
	return cfg
}

// TestCRIHostRuntime: a pod that shares the host's network runs as a
// container on the host, through containerd, beside a VM pod in the same
// CRI server: both are listed, exec-able, survive a SIGKILL of hyperlet and
// are removable; with containerd down, host pods fail with Unavailable and
// the VM pod is unaffected.
func TestCRIHostRuntime(t *testing.T) {
	d, cd := startWithHostRuntime(t)
	ctx := testCtx(t, 10*time.Minute)
	d.pull(ctx)

	st, err := d.rs.Status(ctx, &runtimeapi.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var handlers []string
	for _, h := range st.RuntimeHandlers {
		handlers = append(handlers, h.Name)
	}
	if strings.Join(handlers, ",") != ",hyperlet,runc" {
		t.Errorf("runtime handlers %q, want the VM default, hyperlet and runc", handlers)
	}

	// Stops and removals of IDs neither runtime knows succeed (critest's
	// idempotence specs).
	if _, err := d.rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: "nope"}); err != nil {
		t.Errorf("StopPodSandbox of an unknown pod: %v", err)
	}
	if _, err := d.rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: "nope"}); err != nil {
		t.Errorf("RemovePodSandbox of an unknown pod: %v", err)
	}
	if _, err := d.rs.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: "nope"}); err != nil {
		t.Errorf("StopContainer of an unknown container: %v", err)
	}
	if _, err := d.rs.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: "nope"}); err != nil {
		t.Errorf("RemoveContainer of an unknown container: %v", err)
	}

	vmPod := d.runPod(ctx, podConfig("vm"))
	vmCtr := d.createStart(ctx, vmPod, podConfig("vm"), ctrConfig("c", "sleep", "3600"))
	hostPod := d.runPod(ctx, hostNetworkPod("host"))
	hostCtr := d.createStart(ctx, hostPod, hostNetworkPod("host"), ctrConfig("c", "sleep", "3600"))

	// The host pod sees the node's interfaces; the VM pod only its own.
	hostName, _ := os.Hostname()
	check := func(what string) {
		t.Helper()
		r, err := d.rs.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: hostCtr, Cmd: []string{"hostname"}, Timeout: 30})
		if err != nil || strings.TrimSpace(string(r.Stdout)) != hostName {
			t.Fatalf("%s: hostname in the host-network pod: %v %q, want %q", what, err, r.GetStdout(), hostName)
		}
		r, err = d.rs.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: vmCtr, Cmd: []string{"hostname"}, Timeout: 30})
		if err != nil || strings.TrimSpace(string(r.Stdout)) != "vm-host" {
			t.Fatalf("%s: hostname in the VM pod: %v %q", what, err, r.GetStdout())
		}
		pods, err := d.rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
		if err != nil {
			t.Fatal(err)
		}
		ids := map[string]runtimeapi.PodSandboxState{}
		for _, p := range pods.Items {
			ids[p.Id] = p.State
		}
		if ids[vmPod] != runtimeapi.PodSandboxState_SANDBOX_READY || ids[hostPod] != runtimeapi.PodSandboxState_SANDBOX_READY {
			t.Fatalf("%s: pods listed %v, want both ready", what, ids)
		}
		ctrs, err := d.rs.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
		if err != nil || len(ctrs.Containers) != 2 {
			t.Fatalf("%s: containers listed: %v %v", what, ctrs, err)
		}
		if st := d.status(ctx, hostCtr); st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
			t.Fatalf("%s: host container is %v", what, st.State)
		}
	}
	check("running")

	d.stop(syscall.SIGKILL)
	d.start()
	check("after SIGKILL of hyperlet")

	cd.stop()
	_, err = d.rs.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: hostCtr, Cmd: []string{"true"}, Timeout: 10})
	wantCode(t, "exec in a host pod with containerd down", err, codes.Unavailable)
	_, err = d.rs.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: hostNetworkPod("host2")})
	wantCode(t, "host pod with containerd down", err, codes.Unavailable)
	if r, err := d.rs.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: vmCtr, Cmd: []string{"true"}, Timeout: 30}); err != nil || r.ExitCode != 0 {
		t.Errorf("exec in the VM pod with containerd down: %v", err)
	}
	if pods, err := d.rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err != nil || len(pods.Items) != 1 {
		t.Errorf("pods listed with containerd down: %v %v, want the VM pod", pods, err)
	}

	cd = startContainerd(t, cd.dir, d.reg.Host, filepath.Join(d.dir, "cni"))
	waitFor(t, ctx, "the host pod to be listed again", func() bool {
		pods, err := d.rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
		return err == nil && len(pods.Items) == 2
	})
	for _, p := range []string{hostPod, vmPod} {
		if _, err := d.rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p}); err != nil {
			t.Fatalf("StopPodSandbox %s: %v", p, err)
		}
		if _, err := d.rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p}); err != nil {
			t.Fatalf("RemovePodSandbox %s: %v", p, err)
		}
	}
	if pods, _ := d.rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); len(pods.GetItems()) != 0 {
		t.Errorf("pods left: %v", pods.Items)
	}
}

// sleeperImage is busybox that sleeps: the host runtime's pause image.
func sleeperImage(t *testing.T) v1.Image {
	t.Helper()
	img := imagetest.BusyboxImage(t)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	c.Entrypoint, c.Cmd = []string{"sleep"}, []string{"2147483647"}
	out, err := mutate.Config(img, c)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// unmountUnder detaches every mount below dir, deepest first.
func unmountUnder(dir string) {
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	var mounts []string
	for _, l := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			mounts = append(mounts, f[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(mounts)))
	for _, m := range mounts {
		syscall.Unmount(m, syscall.MNT_DETACH)
	}
}
