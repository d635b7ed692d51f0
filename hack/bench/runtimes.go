package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hyperlet/hyperlet/internal/testcontainerd"
	"github.com/hyperlet/hyperlet/pkg/config"
	"github.com/hyperlet/hyperlet/pkg/vm/qemu"
)

// endpoint is one CRI runtime under test: a daemon this program started,
// with its own state directories and socket.
type endpoint struct {
	name    string // row label
	socket  string
	handler string // the CRI runtime handler its pods ask for ("" = default)
	cmd     *exec.Cmd
	log     *os.File
	rs      runtimeapi.RuntimeServiceClient
	is      runtimeapi.ImageServiceClient
	conn    *grpc.ClientConn
	// podPIDs returns the host processes of a pod (for PSS).
	podPIDs func(ctx context.Context, podID string) ([]int, error)
	// cleanup removes what the daemon left (after stop).
	cleanup func()
	// tcgCacheMiB is the size of each VM's TCG translation cache (hyperlet).
	tcgCacheMiB int
}

// The images both runtimes pull from the local registry through a mirror
// for docker.io.
const (
	busyboxImage = "docker.io/library/busybox:1"
	pauseImage   = "docker.io/hyperlet-test/pause:1"
)

// cniConfig is the pod network both runtimes use: one bridge, one subnet,
// big enough for the density run.
func writeCNIConfig(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	conf := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "hyperlet-bench",
  "plugins": [
    {"type": "bridge", "bridge": "hlbench0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": "10.66.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}`, filepath.Join(dir, "ipam"))
	return os.WriteFile(filepath.Join(dir, "10-bench.conflist"), []byte(conf), 0o644)
}

func (e *endpoint) connect(ctx context.Context) error {
	for {
		if c, err := net.Dial("unix", e.socket); err == nil {
			c.Close()
			break
		}
		if e.cmd.ProcessState != nil {
			return fmt.Errorf("%s exited; see %s", e.name, e.log.Name())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: no socket %s: %w", e.name, e.socket, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	conn, err := grpc.NewClient("unix://"+e.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	e.conn, e.rs, e.is = conn, runtimeapi.NewRuntimeServiceClient(conn), runtimeapi.NewImageServiceClient(conn)
	// Both conditions must hold before anything is measured.
	for {
		st, err := e.rs.Status(ctx, &runtimeapi.StatusRequest{})
		ready := err == nil
		for _, c := range st.GetStatus().GetConditions() {
			ready = ready && c.Status
		}
		if ready {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %v %v", e.name, st, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (e *endpoint) stop() {
	if e.conn != nil {
		e.conn.Close()
	}
	if e.cmd != nil && e.cmd.Process != nil {
		e.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { e.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			e.cmd.Process.Kill()
			<-done
		}
	}
	if e.cleanup != nil {
		e.cleanup()
	}
	if e.log != nil {
		e.log.Close()
	}
}

func startDaemon(e *endpoint, dir string, bin string, args ...string) error {
	log, err := os.Create(filepath.Join(dir, "daemon.log"))
	if err != nil {
		return err
	}
	e.log = log
	e.cmd = exec.Command(bin, args...)
	e.cmd.Stdout, e.cmd.Stderr = log, log
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := e.cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", bin, err)
	}
	go e.cmd.Wait()
	return nil
}

// hyperletMode is one way hyperlet starts pod VMs.
type hyperletMode struct {
	name      string
	templates bool
	pool      int
	// tcgCacheMiB overrides vm.tcg_cache_mib (0: hyperlet's default).
	tcgCacheMiB int
}

func startHyperlet(ctx context.Context, bin, work, cniDir, registry string, m hyperletMode, cfg benchConfig) (*endpoint, error) {
	dir := filepath.Join(work, m.name)
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	tplDir := "/dev/shm/hyperlet-bench-" + m.name
	tcgCache, vmLines := config.Default().VM.TCGCacheMiB, ""
	if m.tcgCacheMiB > 0 {
		tcgCache, vmLines = m.tcgCacheMiB, fmt.Sprintf("tcg_cache_mib = %d\n", m.tcgCacheMiB)
	}
	if len(cfg.kernelArgs) > 0 {
		q := make([]string, len(cfg.kernelArgs))
		for i, a := range cfg.kernelArgs {
			q[i] = strconv.Quote(a)
		}
		vmLines += "kernel_args = [" + strings.Join(q, ", ") + "]\n"
	}
	conf := fmt.Sprintf(`[vm]
kernel = %q
initrd = %q
accel = %q
templates = %t
template_dir = %q
pool_size = %d
%s
[cni]
conf_dir = %q
bin_dirs = ["/usr/lib/cni"]

[registry.mirrors."docker.io"]
endpoint = ["http://%s"]
`, cfg.kernel, cfg.initrd, cfg.accel, m.templates, tplDir, m.pool, vmLines, cniDir, registry)
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(conf), 0o644); err != nil {
		return nil, err
	}
	e := &endpoint{name: "hyperlet " + m.name, socket: filepath.Join(dir, "hyperlet.sock")}
	if cfg.accel != "kvm" {
		e.tcgCacheMiB = tcgCache
	}
	state := filepath.Join(dir, "state")
	if err := startDaemon(e, dir, bin, "--config", filepath.Join(dir, "config.toml"), "--socket", e.socket,
		"--root", filepath.Join(dir, "root"), "--state", state); err != nil {
		return nil, err
	}
	e.podPIDs = func(ctx context.Context, id string) ([]int, error) {
		r, err := e.rs.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id, Verbose: true})
		if err != nil {
			return nil, err
		}
		var info struct {
			VMPid int `json:"vmPid"`
		}
		if err := json.Unmarshal([]byte(r.Info["info"]), &info); err != nil || info.VMPid == 0 {
			return nil, fmt.Errorf("pod %s: no VM pid in %q", id, r.Info["info"])
		}
		return []int{info.VMPid}, nil
	}
	e.cleanup = func() {
		// Nothing of a pod may survive; kill what a failed run left.
		for _, pid := range qemu.RunningPIDs(state) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		os.RemoveAll(tplDir)
	}
	if err := e.connect(ctx); err != nil {
		e.stop()
		return nil, err
	}
	return e, nil
}

// waitWarm waits until hyperlet's templates exist and its pool is full, so
// the first samples measure what an operator sees in steady state.
func (e *endpoint) waitWarm(ctx context.Context, m hyperletMode) error {
	for {
		r, err := e.rs.Status(ctx, &runtimeapi.StatusRequest{Verbose: true})
		if err != nil {
			return err
		}
		var st struct {
			Templates []json.RawMessage `json:"templates"`
			Pool      struct{ Size, Ready int }
		}
		json.Unmarshal([]byte(r.Info["vms"]), &st)
		if (!m.templates || len(st.Templates) > 0) && st.Pool.Ready == st.Pool.Size {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: templates or pool not ready: %s", e.name, r.Info["vms"])
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// startContainerd runs Debian's containerd 1.6 with its CRI plugin and runc,
// in its own root, state and socket, on the same CNI network and registry.
// With gvisorDir (hack/gvisor.sh's binaries) it also serves gVisor's runsc
// (systrap platform) as the handler "runsc", returned as a second endpoint
// on the same daemon; else that endpoint is nil.
func startContainerd(ctx context.Context, work, cniDir, registry, gvisorDir string) (*endpoint, *endpoint, error) {
	dir := filepath.Join(work, "containerd")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, nil, err
	}
	bin, err := exec.LookPath("containerd")
	if err != nil {
		return nil, nil, fmt.Errorf("containerd (Debian package containerd): %w", err)
	}
	conf := testcontainerd.Config{Dir: dir, SandboxImage: pauseImage, CNIConfDir: cniDir, Mirrors: map[string]string{"docker.io": registry}}
	if gvisorDir != "" {
		conf.GVisorShim = filepath.Join(gvisorDir, "containerd-shim-runsc-v1")
		conf.GVisorConfig = filepath.Join(dir, "runsc.toml")
		runsc := fmt.Sprintf("binary_name = %q\nroot = %q\n[runsc_config]\n  platform = \"systrap\"\n",
			filepath.Join(gvisorDir, "runsc"), filepath.Join(dir, "runsc"))
		if err := os.WriteFile(conf.GVisorConfig, []byte(runsc), 0o644); err != nil {
			return nil, nil, err
		}
	}
	confPath, err := conf.Write()
	if err != nil {
		return nil, nil, err
	}
	sock := conf.Socket()
	e := &endpoint{name: "containerd+runc", socket: sock}
	if err := startDaemon(e, dir, bin, "--config", confPath); err != nil {
		return nil, nil, err
	}
	e.podPIDs = func(ctx context.Context, id string) ([]int, error) {
		// The pod's shim (one per sandbox) and everything under it: the
		// sandbox process and the containers.
		shims := processesMatching("-id\x00" + id)
		if len(shims) == 0 {
			return nil, fmt.Errorf("no shim for pod %s", id)
		}
		return withDescendants(shims), nil
	}
	e.cleanup = func() {
		for _, pid := range processesMatching(filepath.Join(dir, "containerd.sock")) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		if gvisorDir != "" {
			// A runsc sandbox outlives a killed shim: its gofer and
			// sandbox processes name their root directory.
			for _, pid := range processesMatching(filepath.Join(dir, "runsc")) {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		unmountUnder(dir)
	}
	if err := e.connect(ctx); err != nil {
		e.stop()
		return nil, nil, err
	}
	if gvisorDir == "" {
		return e, nil, nil
	}
	// The same daemon and connection; only the handler differs. Its shim
	// runs the gofer, the sandbox and the systrap stubs beneath it.
	g := &endpoint{name: "containerd+gVisor", socket: sock, handler: "runsc", rs: e.rs, is: e.is, podPIDs: e.podPIDs}
	return e, g, nil
}

// processesMatching lists processes whose command line contains s.
func processesMatching(s string) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), s) {
			out = append(out, pid)
		}
	}
	return out
}

// withDescendants adds every descendant of pids.
func withDescendants(pids []int) []int {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces; split after ')'.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 1 {
			ppid, _ := strconv.Atoi(f[1])
			children[ppid] = append(children[ppid], pid)
		}
	}
	out := append([]int{}, pids...)
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

// pssKiB sums the proportional set size of pids: each shared page is
// divided among the processes that map it.
func pssKiB(pids []int) (int64, error) {
	var total int64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
		if err != nil {
			return 0, err
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "Pss:"); ok {
				total += kB(v)
				break
			}
		}
	}
	return total, nil
}

// tcgCacheKiB sums the PSS of TCG's translation cache in QEMU processes: the
// anonymous mapping of the configured size (a guard page may be cut off).
func tcgCacheKiB(pids []int, sizeMiB int) int64 {
	want := int64(sizeMiB) << 10
	var total int64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
		if err != nil {
			continue
		}
		match := false
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if len(f) >= 5 && strings.Contains(f[0], "-") && len(f[1]) == 4 {
				var lo, hi int64
				fmt.Sscanf(f[0], "%x-%x", &lo, &hi)
				size := (hi - lo) >> 10
				match = len(f) == 5 && size <= want && size >= want-8
				continue
			}
			if v, ok := strings.CutPrefix(l, "Pss:"); ok && match {
				total += kB(v)
				match = false
			}
		}
	}
	return total
}

// kB parses the value of a smaps field ("   1234 kB").
func kB(v string) int64 {
	n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
	return n
}

// unmountUnder detaches what a killed daemon left mounted under dir (the
// runsc shim's network namespace bind, for one), deepest first.
func unmountUnder(dir string) {
	ms, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: read mounts:", err)
		return
	}
	sort.Slice(ms, func(i, j int) bool { return len(ms[i].Mountpoint) > len(ms[j].Mountpoint) })
	for _, m := range ms {
		if m.Mountpoint != dir && !strings.HasPrefix(m.Mountpoint, dir+"/") {
			continue
		}
		if err := unix.Unmount(m.Mountpoint, unix.MNT_DETACH); err != nil {
			fmt.Fprintln(os.Stderr, "bench: unmount", m.Mountpoint+":", err)
		}
	}
}
