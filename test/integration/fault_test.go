package integration

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hyperlet/hyperlet/pkg/failpoint"
	"github.com/hyperlet/hyperlet/pkg/imageservice/imagetest"
	"github.com/hyperlet/hyperlet/pkg/vm/qemu"
)

// podVM returns the pid of a pod's QEMU, from verbose PodSandboxStatus.
func (d *criDaemon) podVM(ctx context.Context, pod string) int {
	d.t.Helper()
	r, err := d.rs.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod, Verbose: true})
	if err != nil {
		d.t.Fatal(err)
	}
	var info struct {
		VMPid int `json:"vmPid"`
	}
	if err := json.Unmarshal([]byte(r.Info["info"]), &info); err != nil || info.VMPid <= 0 {
		d.t.Fatalf("no VM pid in %q: %v", r.Info["info"], err)
	}
	if !slices.Contains(qemu.RunningPIDs(d.state), info.VMPid) {
		d.t.Fatalf("pid %d is not one of the daemon's QEMUs", info.VMPid)
	}
	return info.VMPid
}

// waitFor polls cond until it holds or ctx ends.
func waitFor(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	pollUntil(t, ctx, 100*time.Millisecond, what, func() (bool, string) { return cond(), "" })
}

// pollUntil calls fn every interval until it reports done, or fails the
// test with fn's last state when ctx ends.
func pollUntil(t *testing.T, ctx context.Context, every time.Duration, what string, fn func() (bool, string)) {
	t.Helper()
	last := ""
	for {
		ok, state := fn()
		if ok {
			return
		}
		last = state
		select {
		case <-ctx.Done():
			t.Fatalf("%s: timed out; last: %s", what, last)
		case <-time.After(every):
		}
	}
}

// TestCRIVMKilledUnderContainer kills a pod's QEMU under a running
// container: the container exits with a reason, the pod is not ready, and
// both are removable without leaving anything.
func TestCRIVMKilledUnderContainer(t *testing.T) {
	d := startCRI(t)
	ctx := testCtx(t, 5*time.Minute)
	d.pull(ctx)
	before := d.hostState(t)
	pod := d.runPod(ctx, podConfig("vmkill"))
	ctr := d.createStart(ctx, pod, podConfig("vmkill"), ctrConfig("c", "sleep", "3600"))
	syscall.Kill(d.podVM(ctx, pod), syscall.SIGKILL)
	waitFor(t, ctx, "the container to exit", func() bool {
		return d.status(ctx, ctr).State == runtimeapi.ContainerState_CONTAINER_EXITED
	})
	st := d.status(ctx, ctr)
	if st.Reason == "" || st.ExitCode == 0 {
		t.Errorf("container of a killed VM: exit %d, reason %q, message %q; want a failure with a reason", st.ExitCode, st.Reason, st.Message)
	}
	waitFor(t, ctx, "the pod to be not ready", func() bool {
		r, err := d.rs.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod})
		return err == nil && r.Status.State == runtimeapi.PodSandboxState_SANDBOX_NOTREADY
	})
	d.removeAllClean(ctx, before)
}

// TestCRINetworkFailures: a CNI ADD that fails (an invalid host-local
// range) and a CNI DEL that fails (a failpoint) leave no network namespace
// that no pod record names; a pod whose teardown failed stays, not ready,
// and the next StopPodSandbox finishes it.
func TestCRINetworkFailures(t *testing.T) {
	d := startCRI(t)
	ctx := testCtx(t, 5*time.Minute)
	before := d.hostState(t)
	conf := filepath.Join(d.dir, "cni", "10-hyperlet-test.conflist")
	good, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	// Every netns the daemon has must be named by a pod record.
	recorded := func() {
		t.Helper()
		pods, err := d.rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, ns := range d.hostState(t).leftSince(before) {
			name, ok := strings.CutPrefix(ns, "netns hyperlet-")
			if !ok {
				continue
			}
			found := false
			for _, p := range pods.Items {
				found = found || strings.HasPrefix(p.Id, name)
			}
			if !found {
				t.Fatalf("netns hyperlet-%s belongs to no pod (pods: %d)", name, len(pods.Items))
			}
		}
	}

	// 1. CNI ADD fails: RunPodSandbox fails, nothing unrecorded is left.
	bad := strings.Replace(string(good), testSubnet, "10.77.00.0/24", 1)
	if err := os.WriteFile(conf, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		cfg := podConfig("badnet")
		cfg.Metadata.Attempt = uint32(i)
		if _, err := d.rs.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg}); err == nil {
			t.Fatal("RunPodSandbox with an invalid pod network succeeded")
		}
		recorded()
	}
	if err := os.WriteFile(conf, good, 0o644); err != nil {
		t.Fatal(err)
	}

	// 2. CNI DEL fails, during a failed start's rollback and during
	// StopPodSandbox: the pod stays, not ready, with its netns recorded.
	d.stop(syscall.SIGTERM)
	d.env = []string{failpoint.EnvVar + "=cni-del=error,run-pod:before-setup=error"}
	d.start()
	if _, err := d.rs.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podConfig("rollback")}); err == nil {
		t.Fatal("RunPodSandbox with a failing setup succeeded")
	}
	recorded()
	d.stop(syscall.SIGTERM)
	d.env = []string{failpoint.EnvVar + "=cni-del=error"}
	d.start()
	pod := d.runPod(ctx, podConfig("stopfail"))
	if _, err := d.rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod}); err == nil {
		t.Fatal("StopPodSandbox with a failing CNI DEL succeeded")
	}
	r, err := d.rs.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod})
	if err != nil {
		t.Fatal(err)
	}
	if r.Status.State != runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
		t.Errorf("pod whose stop failed in CNI DEL is %v, want NOTREADY", r.Status.State)
	}
	recorded()

	// 3. With CNI working again, StopPodSandbox and RemovePodSandbox
	// finish every kept pod, after a restart too.
	d.stop(syscall.SIGKILL)
	d.env = nil
	d.start()
	d.removeAllClean(ctx, before)
}

// TestCRIStoppedVM: a pod VM that stops answering (SIGSTOP) holds up
// nothing: status and list calls answer, exec gives up with an error, and
// a daemon restarted meanwhile serves, with the pod not ready, and removes
// it.
func TestCRIStoppedVM(t *testing.T) {
	d := startCRI(t)
	ctx := testCtx(t, 5*time.Minute)
	d.pull(ctx)
	before := d.hostState(t)
	pod := d.runPod(ctx, podConfig("stopped"))
	ctr := d.createStart(ctx, pod, podConfig("stopped"), ctrConfig("c", "sleep", "3600"))
	pid := d.podVM(ctx, pod)
	syscall.Kill(pid, syscall.SIGSTOP)
	defer syscall.Kill(pid, syscall.SIGCONT)

	qctx, qcancel := context.WithTimeout(ctx, 5*time.Second)
	if _, err := d.rs.ListContainers(qctx, &runtimeapi.ListContainersRequest{}); err != nil {
		t.Errorf("ListContainers with a stopped VM: %v", err)
	}
	if _, err := d.rs.PodSandboxStatus(qctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod}); err != nil {
		t.Errorf("PodSandboxStatus with a stopped VM: %v", err)
	}
	if _, err := d.rs.ContainerStatus(qctx, &runtimeapi.ContainerStatusRequest{ContainerId: ctr}); err != nil {
		t.Errorf("ContainerStatus with a stopped VM: %v", err)
	}
	qcancel()
	ectx, ecancel := context.WithTimeout(ctx, time.Minute)
	if _, err := d.rs.ExecSync(ectx, &runtimeapi.ExecSyncRequest{ContainerId: ctr, Cmd: []string{"true"}, Timeout: 2}); err == nil {
		t.Error("ExecSync in a stopped VM succeeded")
	} else if ectx.Err() != nil {
		t.Errorf("ExecSync with a 2 s timeout in a stopped VM did not return within a minute: %v", err)
	}
	ecancel()
	sctx, scancel := context.WithTimeout(ctx, time.Minute)
	d.rs.StopContainer(sctx, &runtimeapi.StopContainerRequest{ContainerId: ctr, Timeout: 1})
	if sctx.Err() != nil {
		t.Error("StopContainer of a container in a stopped VM did not return within a minute")
	}
	scancel()

	// A daemon restarted while the VM is stopped serves (start waits at
	// most a minute for the socket) and has given up on the VM.
	d.stop(syscall.SIGKILL)
	d.start()
	r, err := d.rs.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod})
	if err != nil {
		t.Fatal(err)
	}
	if r.Status.State != runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
		t.Errorf("pod whose VM was stopped across a restart is %v, want NOTREADY", r.Status.State)
	}
	d.removeAllClean(ctx, before)
}

// TestCRIImageAfterRestart: a pod restored after the daemon was SIGKILLed
// gets a second image's disk hot-added next to the first (not over it) and
// runs a container from it, while the first container keeps running.
func TestCRIImageAfterRestart(t *testing.T) {
	d := startCRI(t)
	ctx := testCtx(t, 5*time.Minute)
	second, err := mutate.AppendLayers(imagetest.BusyboxImage(t), imagetest.Layer(t, map[string]string{"second": "from the second image\n"}))
	if err != nil {
		t.Fatal(err)
	}
	d.reg.Push(t, "hyperlet-test/busybox:2", second)
	d.pull(ctx)
	pod := d.runPod(ctx, podConfig("reimage"))
	first := d.createStart(ctx, pod, podConfig("reimage"), ctrConfig("first", "sleep", "3600"))

	d.stop(syscall.SIGKILL)
	d.start()
	const secondImage = "registry.k8s.io/hyperlet-test/busybox:2"
	if _, err := d.is.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: secondImage}}); err != nil {
		t.Fatal(err)
	}
	cfg := ctrConfig("second", "cat", "/second")
	cfg.Image.Image = secondImage
	ctr := d.createStart(ctx, pod, podConfig("reimage"), cfg)
	st := d.waitExited(ctx, ctr)
	if st.ExitCode != 0 {
		t.Fatalf("container from the image attached after the restart: exit %d (%s)", st.ExitCode, st.Message)
	}
	if st := d.status(ctx, first); st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Errorf("the first container is %v after the second image was attached", st.State)
	}
	// The first image's disk is still the first container's: exec in it.
	r, err := d.rs.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: first, Cmd: []string{"ls", "/bin/busybox"}, Timeout: 30})
	if err != nil || r.ExitCode != 0 {
		t.Errorf("exec in the first container after the second image was attached: %v %+v", err, r)
	}
}

// TestCRIPanicUndone makes RunPodSandbox and CreateContainer panic halfway
// (a failpoint): the call fails, the daemon goes on serving, and what the
// call had made (VM, netns, tap, shared mounts, records) is undone.
func TestCRIPanicUndone(t *testing.T) {
	d := startCRI(t)
	ctx := testCtx(t, 5*time.Minute)
	d.pull(ctx)
	before := d.hostState(t)
	restart := func(points string) {
		t.Helper()
		d.stop(syscall.SIGTERM)
		d.env = nil
		if points != "" {
			d.env = []string{failpoint.EnvVar + "=" + points}
		}
		d.start()
	}
	restart("run-pod:before-setup=panic")
	if _, err := d.rs.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podConfig("panic")}); err == nil ||
		!strings.Contains(err.Error(), "internal error: failpoint run-pod:before-setup") {
		t.Fatalf("RunPodSandbox that panics = %v", err)
	}
	if pods, err := d.rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err != nil || len(pods.Items) != 0 {
		t.Fatalf("after a panicking RunPodSandbox: %v pods, %v", len(pods.GetItems()), err)
	}
	if left := d.hostState(t).leftSince(before); len(left) > 0 {
		t.Fatalf("a panicking RunPodSandbox left %v", left)
	}

	restart("create-container:before-guest=panic")
	vol := filepath.Join(d.dir, "panic-vol")
	os.MkdirAll(vol, 0o755)
	pod := d.runPod(ctx, podConfig("panic"))
	ctr := ctrConfig("c", "sleep", "3600")
	ctr.Mounts = []*runtimeapi.Mount{{ContainerPath: "/v", HostPath: vol}}
	if _, err := d.rs.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: pod, Config: ctr, SandboxConfig: podConfig("panic")}); err == nil ||
		!strings.Contains(err.Error(), "internal error") {
		t.Fatalf("CreateContainer that panics = %v", err)
	}
	if ctrs, err := d.rs.ListContainers(ctx, &runtimeapi.ListContainersRequest{}); err != nil || len(ctrs.Containers) != 0 {
		t.Fatalf("after a panicking CreateContainer: %v containers, %v", len(ctrs.GetContainers()), err)
	}
	// Its name and volume share were released: the same container starts
	// once nothing panics.
	restart("")
	d.createStart(ctx, pod, podConfig("panic"), ctr)
	d.removeAllClean(ctx, before)
}
