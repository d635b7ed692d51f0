package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hyperlet/hyperlet/pkg/vm/qemu"
	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// qemuView is what the host can read of a QEMU process.
type qemuView struct {
	pid                    int
	status                 map[string]string
	cgroup, oom, mountinfo string
	root                   syscall.Stat_t
}

// readView reads a process's view at once (a template build is short).
func readView(pid int) (*qemuView, error) {
	v := &qemuView{pid: pid, status: map[string]string{}}
	p := func(f string) string { return fmt.Sprintf("/proc/%d/%s", pid, f) }
	b, err := os.ReadFile(p("status"))
	if err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		if k, val, ok := strings.Cut(sc.Text(), ":"); ok {
			v.status[k] = strings.TrimSpace(val)
		}
	}
	for _, f := range []struct {
		name string
		to   *string
	}{{"cgroup", &v.cgroup}, {"oom_score_adj", &v.oom}, {"mountinfo", &v.mountinfo}} {
		b, err := os.ReadFile(p(f.name))
		if err != nil {
			return nil, err
		}
		*f.to = string(b)
	}
	if err := syscall.Stat(p("root")+"/", &v.root); err != nil {
		return nil, err
	}
	return v, nil
}

// checkJailed asserts what a compromised QEMU would be left with: an
// unprivileged uid and gid, no capabilities, no_new_privs, a seccomp
// filter, a root that is not the host's, the cgroup and oom_score_adj it
// was given. It returns the QEMU's host uid.
func checkJailed(t *testing.T, what string, pid int, cgroup string, oomScoreAdj int) string {
	t.Helper()
	v, err := readView(pid)
	if err != nil {
		t.Fatalf("%s (pid %d): %v", what, pid, err)
	}
	return v.check(t, what, cgroup, oomScoreAdj)
}

func (v *qemuView) check(t *testing.T, what string, cgroup string, oomScoreAdj int) string {
	t.Helper()
	pid, st := v.pid, v.status
	uid, gid := strings.Fields(st["Uid"]), strings.Fields(st["Gid"])
	for _, ids := range [][]string{uid, gid} {
		for _, id := range ids {
			if id == "0" {
				t.Errorf("%s (pid %d) runs with uid/gid 0: Uid %v Gid %v", what, pid, uid, gid)
			}
		}
	}
	for k, want := range map[string]string{"CapEff": "0000000000000000", "CapPrm": "0000000000000000", "CapBnd": "0000000000000000", "NoNewPrivs": "1", "Seccomp": "2"} {
		if st[k] != want {
			t.Errorf("%s (pid %d): %s is %q, want %q", what, pid, k, st[k], want)
		}
	}
	var hostRoot syscall.Stat_t
	syscall.Stat("/", &hostRoot)
	if v.root.Dev == hostRoot.Dev && v.root.Ino == hostRoot.Ino {
		t.Errorf("%s (pid %d): its root is the host's /", what, pid)
	}
	for _, l := range strings.Split(strings.TrimSpace(v.mountinfo), "\n") {
		// Fields: id parent dev root mountpoint ...
		if f := strings.Fields(l); len(f) > 4 && f[4] == "/" && f[3] != "/" {
			t.Errorf("%s (pid %d): root mount is a bind of %s", what, pid, f[3])
		}
	}
	if n := strings.Count(v.mountinfo, "\n"); n > 20 {
		t.Errorf("%s (pid %d) sees %d mounts:\n%s", what, pid, n, v.mountinfo)
	}
	if !strings.Contains(v.cgroup, cgroup) {
		t.Errorf("%s (pid %d) is not in a cgroup under %s:\n%s", what, pid, cgroup, v.cgroup)
	}
	if strings.TrimSpace(v.oom) != strconv.Itoa(oomScoreAdj) {
		t.Errorf("%s (pid %d): oom_score_adj %s, want %d", what, pid, v.oom, oomScoreAdj)
	}
	if len(uid) == 0 {
		return ""
	}
	return uid[0]
}

// TestCRIJail: every QEMU the daemon starts (warm pool, template build,
// template clone, cold boot) is jailed, each as its own uid, in its pod's
// cgroup; a privileged container cannot make device nodes or setuid files
// that are real on the host; the jailed QEMU cannot write the share root;
// the console log is capped; hostile requests are refused and the daemon
// keeps serving.
func TestCRIJail(t *testing.T) {
	d := startCRI(t, "pool_size = 1", "jail.console_limit_bytes = 65536")
	ctx := testCtx(t, 8*time.Minute)
	d.pull(ctx)
	d.waitPool(ctx)
	t.Cleanup(func() {
		removeCgroups("hyperlet-test")
		for _, tap := range warmTaps() { // a warm VM's, if the test failed
			exec.Command("ip", "link", "del", tap).Run()
		}
	})

	// Distinct QEMU processes must have distinct uids.
	uids := map[string]int{}
	seen := func(what string, pid int, uid string) {
		if other, ok := uids[uid]; ok && other != pid {
			t.Errorf("%s (pid %d) shares uid %s with pid %d", what, pid, uid, other)
		}
		uids[uid] = pid
	}
	warm := qemu.RunningPIDs(filepath.Join(d.state, "vms"))
	if len(warm) != 1 {
		t.Fatalf("want one warm VM, found %v", warm)
	}
	seen("warm VM", warm[0], checkJailed(t, "warm VM", warm[0], "/hyperlet/hyperlet-vm-", 0))

	host := t.TempDir()
	vol := filepath.Join(host, "vol")
	os.Mkdir(vol, 0o755)
	type podCase struct {
		name, parent string
		oom          int
		memory       int64
		boot         string
	}
	cases := []podCase{
		{"jail-pool", "/hyperlet-test/besteffort/pod-a", 1000, 0, "pool"},
		// A template clone, or the refilled warm VM if it was quicker.
		{"jail-clone", "/hyperlet-test/burstable/pod-b", 500, 0, ""},
		// A new VM size: booted, and its template built in the background.
		{"jail-boot", "/hyperlet-test/pod-c", 0, 64 << 20, "boot"},
	}
	var pods []string
	var podCfgs []*runtimeapi.PodSandboxConfig
	for _, c := range cases {
		cfg := podConfig(c.name)
		cfg.Linux.CgroupParent = c.parent
		cfg.Linux.SecurityContext.Privileged = true
		cfg.LogDirectory = filepath.Join(d.dir, "logs", c.name)
		if c.memory > 0 {
			cfg.Linux.Overhead = &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: c.memory}
		}
		var build chan *qemuView
		if c.boot == "boot" {
			// Its template is built in the background meanwhile.
			build = make(chan *qemuView, 1)
			go func() { build <- waitTemplateBuild(ctx, d) }()
		}
		id := d.runPod(ctx, cfg)
		pods, podCfgs = append(pods, id), append(podCfgs, cfg)
		if got := d.podBoot(ctx, id); c.boot != "" && got != c.boot {
			t.Errorf("pod %s started by %s, want %s", c.name, got, c.boot)
		}
		pid := podVMPID(t, d, ctx, id)
		seen(c.name, pid, checkJailed(t, c.name, pid, c.parent+"/hyperlet-vm-", c.oom))
		if build != nil {
			if v := <-build; v != nil {
				seen("template build", v.pid, v.check(t, "template build", "/hyperlet/hyperlet-vm-", 0))
			} else {
				t.Error("saw no template build QEMU")
			}
		}
	}

	// Guest root makes a device node and a setuid-root file in a volume.
	ctr := ctrConfig("priv", "sleep", "1000")
	ctr.Linux = &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{Privileged: true}}
	ctr.Mounts = []*runtimeapi.Mount{{ContainerPath: "/v", HostPath: vol}}
	cid := d.createStart(ctx, pods[0], podCfgs[0], ctr)
	r, err := d.exec(ctx, cid, 0, "sh", "-c", "mknod /v/null c 1 3 && mknod /v/sda b 8 0 && echo x > /v/suid && chown 0:0 /v/suid && chmod 6755 /v/suid && ls -ln /v")
	if err != nil || r.ExitCode != 0 {
		t.Fatalf("mknod/setuid in the container: %v %v %s", r, err, r.GetStderr())
	}
	// The guest sees what it made...
	if out := string(r.Stdout); !strings.Contains(out, "crw") || !strings.Contains(out, "rwsr-sr-x") {
		t.Errorf("guest view of its files:\n%s", out)
	}
	// ...the host sees plain files, nothing setuid.
	for _, n := range []string{"null", "sda", "suid"} {
		st, err := os.Lstat(filepath.Join(vol, n))
		if err != nil {
			t.Fatal(err)
		}
		if !st.Mode().IsRegular() || st.Mode()&(os.ModeSetuid|os.ModeSetgid) != 0 {
			t.Errorf("host sees %s as %v", n, st.Mode())
		}
	}

	// A compromised QEMU (a process in its namespaces, with every
	// capability its user namespace gives) cannot write the share root.
	pid := podVMPID(t, d, ctx, pods[0])
	out, err := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-U", "-m", "-r", "-w", "sh", "-c",
		"ls /share >/dev/null && echo x > /share/escape").CombinedOutput()
	if err == nil {
		t.Errorf("QEMU's namespaces wrote the share root: %s", out)
	} else if !strings.Contains(string(out), "ermission denied") {
		t.Errorf("writing the share root from QEMU's namespaces: %v %s", err, out)
	}

	// The console log stays under its cap.
	if r, err := d.exec(ctx, cid, 0, "sh", "-c", "head -c 400000 /dev/zero | tr '\\0' x > /dev/ttyS0"); err != nil || r.ExitCode != 0 {
		t.Fatalf("write to the console: %v %v", r, err)
	}
	time.Sleep(time.Second)
	if st, err := os.Stat(filepath.Join(d.root, "pods", pods[0], "console.log")); err != nil || st.Size() > 65536 || st.Size() < 1024 {
		t.Errorf("console log: %v, size %d, cap 65536", err, st.Size())
	}

	// Hostile requests: refused, and the daemon keeps serving.
	zero := ctrConfig("zero", "true")
	zero.Linux = &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
		Seccomp: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: "/dev/zero"}}}
	_, err = d.rs.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: pods[1], Config: zero, SandboxConfig: podCfgs[1]})
	wantCode(t, "/dev/zero seccomp profile", err, codes.InvalidArgument)
	escape := ctrConfig("escape", "true")
	escape.LogPath = "../../../../etc/hyperlet-escape.log"
	_, err = d.rs.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: pods[1], Config: escape, SandboxConfig: podCfgs[1]})
	wantCode(t, "log path outside the pod's log directory", err, codes.InvalidArgument)
	huge := podConfig("jail-huge")
	huge.Linux.Resources = &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 1 << 40}
	_, err = d.rs.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: huge})
	wantCode(t, "1 TiB pod", err, codes.InvalidArgument)
	if _, err := d.rs.Version(ctx, &runtimeapi.VersionRequest{}); err != nil {
		t.Fatalf("daemon stopped serving: %v", err)
	}

	for _, id := range pods {
		if _, err := d.rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
			t.Fatalf("remove pod: %v", err)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(d.state, "shared")); len(ents) > 1 { // the warm VM's
		t.Errorf("shared directories left: %v", ents)
	}
	d.stop(syscall.SIGTERM) // ends the warm VM and removes its tap
}

func podVMPID(t *testing.T, d *criDaemon, ctx context.Context, id string) int {
	t.Helper()
	r, err := d.rs.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id, Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		VMPid int `json:"vmPid"`
	}
	if err := json.Unmarshal([]byte(r.Info["info"]), &info); err != nil || info.VMPid == 0 {
		t.Fatalf("pod %s: no VM pid in %q", id, r.Info["info"])
	}
	return info.VMPid
}

// waitTemplateBuild returns the view of a template build's QEMU, nil if
// none runs within a minute.
func waitTemplateBuild(ctx context.Context, d *criDaemon) *qemuView {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		matches, _ := filepath.Glob(filepath.Join(d.state, "vms", "tpl-*"))
		for _, m := range matches {
			for _, pid := range qemu.RunningPIDs(m) {
				// Caught right after exec, QEMU may not have installed
				// its seccomp filter yet: it does before it runs a guest.
				time.Sleep(300 * time.Millisecond)
				if v, err := readView(pid); err == nil {
					return v
				}
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// removeCgroups removes the cgroups a test's pods were given, deepest first.
func removeCgroups(top string) {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/" + top)
	if st, err := os.Stat("/sys/fs/cgroup/" + top); err == nil && st.IsDir() {
		roots = append(roots, "/sys/fs/cgroup/"+top)
	}
	for _, r := range roots {
		var dirs []string
		filepath.WalkDir(r, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			syscall.Rmdir(dirs[i])
		}
	}
}
