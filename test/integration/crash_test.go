package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hyperlet/hyperlet/pkg/failpoint"
	"github.com/hyperlet/hyperlet/pkg/vm/qemu"
)

// hostState is what a daemon can leave on the host.
type hostState struct {
	netns   []string // hyperlet-* network namespaces
	cgroups []string // hyperlet-vm-* cgroups
	mounts  []string // mount points under the daemon's directories
	qemus   []int    // QEMU processes of the daemon's VMs
	files   []string // pod, share and VM directories
}

func (d *criDaemon) hostState(t *testing.T) hostState {
	t.Helper()
	var st hostState
	ents, _ := os.ReadDir("/var/run/netns")
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "hyperlet-") {
			st.netns = append(st.netns, e.Name())
		}
	}
	for _, root := range []string{"/sys/fs/cgroup/pids", "/sys/fs/cgroup/memory", "/sys/fs/cgroup"} {
		if _, err := os.Stat(filepath.Join(root, "cgroup.procs")); err != nil {
			continue
		}
		filepath.WalkDir(root, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() && strings.HasPrefix(e.Name(), "hyperlet-vm-") {
				st.cgroups = append(st.cgroups, p)
				return filepath.SkipDir
			}
			return nil
		})
		break
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], d.dir+"/") {
			st.mounts = append(st.mounts, f[4])
		}
	}
	st.qemus = qemu.RunningPIDs(d.state)
	for _, dir := range []string{filepath.Join(d.root, "pods"), filepath.Join(d.state, "shared"), filepath.Join(d.state, "vms")} {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if !strings.HasPrefix(e.Name(), "probe") {
				st.files = append(st.files, filepath.Join(dir, e.Name()))
			}
		}
	}
	return st
}

// leftSince lists what st has that before had not.
func (st hostState) leftSince(before hostState) []string {
	var out []string
	for _, n := range st.netns {
		if !slices.Contains(before.netns, n) {
			out = append(out, "netns "+n)
		}
	}
	for _, c := range st.cgroups {
		if !slices.Contains(before.cgroups, c) {
			out = append(out, "cgroup "+c)
		}
	}
	for _, m := range st.mounts {
		out = append(out, "mount "+m)
	}
	for _, p := range st.qemus {
		out = append(out, fmt.Sprintf("qemu pid %d", p))
	}
	for _, f := range st.files {
		out = append(out, "file "+f)
	}
	return out
}

// removeAll removes every pod through the CRI and checks that no record
// is left.
func (d *criDaemon) removeAll(ctx context.Context) {
	t := d.t
	t.Helper()
	pods, err := d.rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if _, err := d.rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.Id}); err != nil {
			t.Fatalf("StopPodSandbox %s: %v", p.Id, err)
		}
		if _, err := d.rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.Id}); err != nil {
			t.Fatalf("RemovePodSandbox %s: %v", p.Id, err)
		}
	}
	pods, _ = d.rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	ctrs, _ := d.rs.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if len(pods.GetItems()) > 0 || len(ctrs.GetContainers()) > 0 {
		t.Fatalf("records left after removing everything: %d pods, %d containers", len(pods.GetItems()), len(ctrs.GetContainers()))
	}
}

// removeAllClean removes every pod through the CRI and checks that the
// host has nothing more than it had before.
func (d *criDaemon) removeAllClean(ctx context.Context, before hostState) {
	d.t.Helper()
	d.removeAll(ctx)
	if left := d.hostState(d.t).leftSince(before); len(left) > 0 {
		d.t.Fatalf("left on the host after removing everything:\n%s\nhyperlet log:\n%s", strings.Join(left, "\n"), d.log)
	}
}

// crashAt restarts the daemon with the failpoint set to kill it, runs op
// (which must hit it) and restarts the daemon without failpoints.
func (d *criDaemon) crashAt(name string, op func() error) {
	t := d.t
	t.Helper()
	d.stop(syscall.SIGTERM)
	d.env = []string{failpoint.EnvVar + "=" + name + "=kill"}
	d.start()
	cmd := d.cmd
	err := op()
	if err == nil {
		t.Fatalf("%s: the call succeeded: the failpoint was not hit", name)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case werr := <-exited:
		var ee *exec.ExitError
		if !errors.As(werr, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("%s: daemon ended with %v, want SIGKILL by the failpoint (call error: %v)\n%s", name, werr, err, d.log)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: the daemon still runs after the call failed with %v", name, err)
	}
	d.cmd = nil
	d.conn.Close()
	d.env = nil
	d.start()
}

// TestCRICrashAtEveryStep kills the daemon (SIGKILL, from a failpoint) at
// each step of RunPodSandbox, CreateContainer, StartContainer,
// StopPodSandbox, RemovePodSandbox and PullImage, restarts it, checks that
// what the step did is either finished or cleanly undone, then removes
// everything through the CRI: no VM, netns, cgroup, mount, directory or
// record may be left.
func TestCRICrashAtEveryStep(t *testing.T) {
	d := startCRI(t)
	ctx := testCtx(t, 20*time.Minute)
	d.pull(ctx)
	// The base template is built once, before the crashes: a daemon killed
	// during a build loses it (the next one sweeps the builder), and the
	// builder running is no leak.
	for len(d.vmStatus(ctx).Templates) == 0 {
		if ctx.Err() != nil {
			t.Fatal("the base VM template was not built")
		}
		time.Sleep(200 * time.Millisecond)
	}
	before := d.hostState(t)
	vol := filepath.Join(d.dir, "vol")
	os.MkdirAll(vol, 0o755)
	ctr := ctrConfig("c", "sleep", "3600")
	ctr.Mounts = []*runtimeapi.Mount{{ContainerPath: "/v", HostPath: vol}}

	// Each step: what to set up first, the call that crashes, and what
	// must be true after the restart.
	type fixture = crashFixture
	parent := d.t
	for _, tc := range []struct {
		failpoint string
		setup     func(d *criDaemon, ctx context.Context, f *fixture, ctr *runtimeapi.ContainerConfig)
		call      func(f *fixture) error
		after     func(f *fixture)
	}{
		{failpoint: "run-pod:before-network"},
		{failpoint: "run-pod:before-vm"},
		{failpoint: "run-pod:before-setup"},
		{failpoint: "run-pod:before-ready"},
		{failpoint: "create-container:before-volumes", setup: withPod},
		{failpoint: "create-container:before-guest", setup: withPod},
		{failpoint: "create-container:before-record", setup: withPod},
		{failpoint: "start-container:before-guest", setup: withContainer,
			after: func(f *fixture) {
				// The start never reached the guest: the container is still
				// created, and starts now.
				if st := d.status(ctx, f.ctr); st.State != runtimeapi.ContainerState_CONTAINER_CREATED {
					d.t.Fatalf("container is %v, want CREATED", st.State)
				}
				if _, err := d.rs.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: f.ctr}); err != nil {
					d.t.Fatalf("StartContainer after the restart: %v", err)
				}
			}},
		{failpoint: "start-container:before-record", setup: withContainer,
			after: func(f *fixture) {
				// The guest started it: the record says so now.
				if st := d.status(ctx, f.ctr); st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
					d.t.Fatalf("container is %v, want RUNNING", st.State)
				}
			}},
		{failpoint: "stop-pod:before-network", setup: withRunning,
			call: func(f *fixture) error {
				_, err := d.rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: f.pod})
				return err
			}},
		{failpoint: "remove-pod:before-files", setup: withRunning,
			call: func(f *fixture) error {
				_, err := d.rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: f.pod})
				return err
			}},
		{failpoint: "pull-image:before-record",
			call: func(f *fixture) error {
				_, err := d.is.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: testImage}})
				return err
			},
			after: func(f *fixture) {
				// The image pulled before is intact, and pulling works.
				if _, err := d.is.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: testImage}}); err != nil {
					d.t.Fatalf("pull after the restart: %v", err)
				}
				pod := d.runPod(ctx, podConfig("crash"))
				d.createStart(ctx, pod, podConfig("crash"), ctrConfig("after-pull", "true"))
			}},
	} {
		t.Run(tc.failpoint, func(t *testing.T) {
			d.t = t
			defer func() { d.t = parent }()
			f := &fixture{}
			call := tc.call
			switch {
			case call != nil:
			case strings.HasPrefix(tc.failpoint, "run-pod:"):
				call = func(f *fixture) error {
					_, err := d.rs.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podConfig("crash")})
					return err
				}
			case strings.HasPrefix(tc.failpoint, "create-container:"):
				call = func(f *fixture) error {
					_, err := d.rs.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: f.pod, Config: ctr, SandboxConfig: podConfig("crash")})
					return err
				}
			case strings.HasPrefix(tc.failpoint, "start-container:"):
				call = func(f *fixture) error {
					_, err := d.rs.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: f.ctr})
					return err
				}
			}
			d.crashAt(tc.failpoint, func() error {
				if tc.setup != nil {
					tc.setup(d, ctx, f, ctr)
				}
				return call(f)
			})
			// The pod is either there, ready with its containers, or
			// cleanly removable.
			if f.pod != "" && !strings.HasPrefix(tc.failpoint, "stop-pod:") && !strings.HasPrefix(tc.failpoint, "remove-pod:") {
				r, err := d.rs.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: f.pod})
				if err != nil {
					t.Fatalf("PodSandboxStatus after the restart: %v", err)
				}
				if r.Status.State != runtimeapi.PodSandboxState_SANDBOX_READY {
					t.Fatalf("pod is %v after a crash in a container step, want READY", r.Status.State)
				}
			}
			if strings.HasPrefix(tc.failpoint, "create-container:") {
				if l, _ := d.rs.ListContainers(ctx, &runtimeapi.ListContainersRequest{}); len(l.GetContainers()) > 0 {
					t.Fatalf("a creation cut short left a container: %v", l.Containers[0])
				}
			}
			if tc.after != nil {
				tc.after(f)
			}
			d.removeAllClean(ctx, before)
		})
	}
}

// crashFixture is what a crash case set up before its call.
type crashFixture struct{ pod, ctr string }

func withPod(d *criDaemon, ctx context.Context, f *crashFixture, _ *runtimeapi.ContainerConfig) {
	f.pod = d.runPod(ctx, podConfig("crash"))
}

func withContainer(d *criDaemon, ctx context.Context, f *crashFixture, ctr *runtimeapi.ContainerConfig) {
	withPod(d, ctx, f, ctr)
	r, err := d.rs.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: f.pod, Config: ctr, SandboxConfig: podConfig("crash")})
	if err != nil {
		d.t.Fatalf("CreateContainer: %v", err)
	}
	f.ctr = r.ContainerId
}

func withRunning(d *criDaemon, ctx context.Context, f *crashFixture, ctr *runtimeapi.ContainerConfig) {
	withContainer(d, ctx, f, ctr)
	if _, err := d.rs.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: f.ctr}); err != nil {
		d.t.Fatalf("StartContainer: %v", err)
	}
}
