// Command soak churns pods through a hyperlet daemon for a long time and
// checks that nothing grows or leaks: with -clients concurrent callers it
// creates pods with a container, execs in it, reads its log and removes the
// pod, for -duration; it samples the daemon's fds, goroutines and RSS, the
// disk under its --root and --state, and the host's MemAvailable at the
// start and the end; then it SIGKILLs the daemon in the middle of -burst
// concurrent RunPodSandbox calls, restarts it and checks that no pod was
// lost (every start reported done is still there) and nothing leaked once
// all are removed. Results go to -out as a markdown table.
//
//	hack/registry.sh up && go run ./hack/soak -duration 1h
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"

	"github.com/hyperlet/hyperlet/pkg/vm/qemu"
)

const image = "docker.io/library/busybox:1"

func main() {
	var (
		duration = flag.Duration("duration", time.Hour, "how long to churn pods")
		clients  = flag.Int("clients", 4, "concurrent callers")
		burst    = flag.Int("burst", 20, "concurrent RunPodSandbox calls the daemon is killed in")
		bin      = flag.String("hyperlet", "_output/hyperlet", "hyperlet binary")
		work     = flag.String("work", "/tmp/hyperlet-soak", "the daemon's directories (short: socket path)")
		registry = flag.String("registry", "127.0.0.1:5050", "the local registry (hack/registry.sh)")
		kernel   = flag.String("kernel", "_output/vmlinux", "guest kernel")
		initrd   = flag.String("initrd", "_output/initrd.img", "guest initramfs")
		out      = flag.String("out", "docs/soak.md", "where the results table goes (empty: stdout only)")
	)
	flag.Parse()
	s := &soak{work: abs(*work), bin: abs(*bin), kernel: abs(*kernel), initrd: abs(*initrd), registry: *registry}
	if err := s.setup(); err != nil {
		klog.Fatal(err)
	}
	defer s.teardown()
	report, err := s.run(*duration, *clients, *burst)
	fmt.Print(report)
	if *out != "" && report != "" {
		if werr := os.WriteFile(*out, []byte(report), 0o644); werr != nil {
			klog.Error(werr)
		}
	}
	if err != nil {
		s.teardown()
		klog.Fatal(err)
	}
}

func abs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	return a
}

type soak struct {
	work, bin, kernel, initrd, registry string
	root, state, socket, config         string

	cmd  *exec.Cmd
	conn *grpc.ClientConn
	rs   runtimeapi.RuntimeServiceClient
	is   runtimeapi.ImageServiceClient
	seq  atomic.Int64
}

func (s *soak) setup() error {
	os.RemoveAll(s.work)
	s.root, s.state = filepath.Join(s.work, "root"), filepath.Join(s.work, "state")
	s.socket, s.config = filepath.Join(s.work, "hyperlet.sock"), filepath.Join(s.work, "config.toml")
	cniDir := filepath.Join(s.work, "cni")
	if err := os.MkdirAll(cniDir, 0o755); err != nil {
		return err
	}
	os.Chmod(s.work, 0o711)
	conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "soak", "plugins": [
  {"type": "bridge", "bridge": "hls0", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": "10.67.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]}}]}`,
		filepath.Join(s.work, "ipam"))
	if err := os.WriteFile(filepath.Join(cniDir, "10-soak.conflist"), []byte(conf), 0o644); err != nil {
		return err
	}
	cfg := fmt.Sprintf(`[vm]
kernel = %q
initrd = %q
template_dir = "/dev/shm/hyperlet-soak-templates"
pool_size = 2

[cni]
conf_dir = %q
bin_dirs = ["/usr/lib/cni"]

[registry.mirrors."docker.io"]
endpoint = ["http://%s"]
`, s.kernel, s.initrd, cniDir, s.registry)
	return os.WriteFile(s.config, []byte(cfg), 0o644)
}

func (s *soak) start() error {
	log, err := os.OpenFile(filepath.Join(s.work, "daemon.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	s.cmd = exec.Command(s.bin, "--config", s.config, "--socket", s.socket, "--root", s.root, "--state", s.state)
	s.cmd.Stdout, s.cmd.Stderr = log, log
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for {
		if c, err := net.Dial("unix", s.socket); err == nil {
			c.Close()
			break
		}
		if ctx.Err() != nil {
			return fmt.Errorf("no socket %s", s.socket)
		}
		time.Sleep(50 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix://"+s.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	s.conn, s.rs, s.is = conn, runtimeapi.NewRuntimeServiceClient(conn), runtimeapi.NewImageServiceClient(conn)
	for {
		st, err := s.rs.Status(ctx, &runtimeapi.StatusRequest{Verbose: true})
		ready := err == nil
		for _, c := range st.GetStatus().GetConditions() {
			ready = ready && c.Status
		}
		var vms struct{ Templates []json.RawMessage }
		json.Unmarshal([]byte(st.GetInfo()["vms"]), &vms)
		if ready && len(vms.Templates) > 0 {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("hyperlet not ready: %v %v", st, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (s *soak) kill(sig syscall.Signal) {
	if s.conn != nil {
		s.conn.Close()
	}
	if s.cmd != nil {
		s.cmd.Process.Signal(sig)
		s.cmd.Wait()
		s.cmd = nil
	}
}

func (s *soak) teardown() {
	if s.cmd != nil {
		s.removeAll(context.Background())
		s.kill(syscall.SIGTERM)
	}
	for _, pid := range qemu.RunningPIDs(s.state) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	exec.Command("ip", "link", "del", "hls0").Run()
}

// sample is what must stay flat over the soak.
type sample struct {
	fds, goroutines, threads int
	rssKiB, diskKiB          int64
	memAvailableMiB          int64
	pods, vms                int
}

func (s *soak) sample(ctx context.Context) sample {
	var sm sample
	pid := s.cmd.Process.Pid
	if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); err == nil {
		sm.fds = len(ents)
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if len(f) >= 2 && f[0] == "VmRSS:" {
				sm.rssKiB, _ = strconv.ParseInt(f[1], 10, 64)
			}
			if len(f) >= 2 && f[0] == "Threads:" {
				sm.threads, _ = strconv.Atoi(f[1])
			}
		}
	}
	if st, err := s.rs.Status(ctx, &runtimeapi.StatusRequest{Verbose: true}); err == nil {
		var d struct{ Goroutines int }
		json.Unmarshal([]byte(st.Info["daemon"]), &d)
		sm.goroutines = d.Goroutines
	}
	for _, dir := range []string{s.root, s.state} {
		filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
			if err == nil && e.Type().IsRegular() {
				if info, err := e.Info(); err == nil {
					if st, ok := info.Sys().(*syscall.Stat_t); ok {
						sm.diskKiB += st.Blocks / 2
					}
				}
			}
			return nil
		})
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemAvailable:" {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				sm.memAvailableMiB = kb >> 10
			}
		}
	}
	if l, err := s.rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err == nil {
		sm.pods = len(l.Items)
	}
	sm.vms = len(qemu.RunningPIDs(s.state))
	return sm
}

func (s *soak) podConfig() *runtimeapi.PodSandboxConfig {
	name := fmt.Sprintf("soak-%d", s.seq.Add(1))
	logDir := filepath.Join(s.work, "logs", name)
	os.MkdirAll(logDir, 0o755)
	return &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "soak", Uid: name},
		LogDirectory: logDir,
		Linux:        &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{}},
	}
}

// cycle is one pod's life: run, create and start a container, exec in it,
// read its log, stop and remove.
func (s *soak) cycle(ctx context.Context) error {
	cfg := s.podConfig()
	r, err := s.rs.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		return fmt.Errorf("RunPodSandbox: %w", err)
	}
	defer os.RemoveAll(cfg.LogDirectory)
	defer func() {
		s.rs.StopPodSandbox(context.Background(), &runtimeapi.StopPodSandboxRequest{PodSandboxId: r.PodSandboxId})
		s.rs.RemovePodSandbox(context.Background(), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: r.PodSandboxId})
	}()
	c, err := s.rs.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: r.PodSandboxId, SandboxConfig: cfg,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "c"},
			Image:    &runtimeapi.ImageSpec{Image: image},
			Command:  []string{"sh", "-c", "echo soak-ready; exec sleep 3600"},
			LogPath:  "c.log",
		}})
	if err != nil {
		return fmt.Errorf("CreateContainer: %w", err)
	}
	if _, err := s.rs.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
		return fmt.Errorf("StartContainer: %w", err)
	}
	x, err := s.rs.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: c.ContainerId, Cmd: []string{"echo", "exec-ok"}, Timeout: 60})
	if err != nil || !strings.Contains(string(x.GetStdout()), "exec-ok") {
		return fmt.Errorf("ExecSync: %v %q", err, x.GetStdout())
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(filepath.Join(cfg.LogDirectory, "c.log"))
		if strings.Contains(string(b), "soak-ready") {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("container log has no output: %q", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

func (s *soak) removeAll(ctx context.Context) error {
	l, err := s.rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return err
	}
	for _, p := range l.Items {
		if _, err := s.rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.Id}); err != nil {
			return fmt.Errorf("stop %s: %w", p.Id, err)
		}
		if _, err := s.rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.Id}); err != nil {
			return fmt.Errorf("remove %s: %w", p.Id, err)
		}
	}
	return nil
}

// leaks lists netns, pod directories, share directories and VMs left.
func (s *soak) leaks(netnsBefore map[string]bool) []string {
	var out []string
	ents, _ := os.ReadDir("/var/run/netns")
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "hyperlet-") && !netnsBefore[e.Name()] {
			out = append(out, "netns "+e.Name())
		}
	}
	ents, _ = os.ReadDir(filepath.Join(s.root, "pods"))
	for _, e := range ents {
		out = append(out, "pod directory "+e.Name())
	}
	pool := 0
	if b, err := s.rs.Status(context.Background(), &runtimeapi.StatusRequest{Verbose: true}); err == nil {
		var vms struct{ Pool struct{ Ready int } }
		json.Unmarshal([]byte(b.Info["vms"]), &vms)
		pool = vms.Pool.Ready
	}
	// Warm VMs have a QEMU and a share directory each; one more may be
	// starting.
	if n := len(qemu.RunningPIDs(s.state)); n > pool+1 {
		out = append(out, fmt.Sprintf("%d QEMUs with %d warm VMs", n, pool))
	}
	if ents, _ := os.ReadDir(filepath.Join(s.state, "shared")); len(ents) > pool+1 {
		out = append(out, fmt.Sprintf("%d share directories with %d warm VMs", len(ents), pool))
	}
	return out
}

func netnsSet() map[string]bool {
	out := map[string]bool{}
	ents, _ := os.ReadDir("/var/run/netns")
	for _, e := range ents {
		out[e.Name()] = true
	}
	return out
}

func (s *soak) run(duration time.Duration, clients, burst int) (string, error) {
	netnsBefore := netnsSet()
	if err := s.start(); err != nil {
		return "", err
	}
	ctx := context.Background()
	if _, err := s.is.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: image}}); err != nil {
		return "", fmt.Errorf("pull: %w", err)
	}
	// One cycle first, so the start sample has every cache and goroutine
	// pool a pod brings up once.
	if err := s.cycle(ctx); err != nil {
		return "", err
	}
	time.Sleep(5 * time.Second)
	begin := s.sample(ctx)
	t0 := time.Now()
	var cycles, failures atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Since(t0) < duration {
				if err := s.cycle(ctx); err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					klog.ErrorS(err, "cycle")
					time.Sleep(time.Second)
					continue
				}
				cycles.Add(1)
			}
		}()
	}
	go func() {
		for time.Since(t0) < duration {
			time.Sleep(time.Minute)
			klog.InfoS("soak", "elapsed", time.Since(t0).Round(time.Second), "cycles", cycles.Load(), "failures", failures.Load())
		}
	}()
	wg.Wait()
	elapsed := time.Since(t0)
	time.Sleep(5 * time.Second)
	end := s.sample(ctx)
	leftAfterChurn := s.leaks(netnsBefore)

	// The kill -9 burst.
	var (
		mu      sync.Mutex
		started []string
		calls   sync.WaitGroup
	)
	for range burst {
		calls.Add(1)
		go func() {
			defer calls.Done()
			r, err := s.rs.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: s.podConfig()})
			if err == nil {
				mu.Lock()
				started = append(started, r.PodSandboxId)
				mu.Unlock()
			}
		}()
	}
	// Kill it mid-burst: once a quarter of the starts have returned (the
	// rest are in flight), or after a minute.
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		mu.Lock()
		n := len(started)
		mu.Unlock()
		if n >= burst/4 {
			break
		}
	}
	s.kill(syscall.SIGKILL)
	calls.Wait()
	confirmed := append([]string(nil), started...)
	if err := s.start(); err != nil {
		return "", fmt.Errorf("restart after kill -9: %w", err)
	}
	list, err := s.rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return "", err
	}
	have := map[string]bool{}
	for _, p := range list.Items {
		have[p.Id] = true
	}
	lost := 0
	for _, id := range confirmed {
		if !have[id] {
			lost++
		}
	}
	listed := len(list.Items)
	if err := s.removeAll(ctx); err != nil {
		return "", fmt.Errorf("remove after kill -9: %w", err)
	}
	leftAfterBurst := s.leaks(netnsBefore)

	var b strings.Builder
	fmt.Fprintf(&b, "# Soak\n\n`go run ./hack/soak -duration %v -clients %d -burst %d` (`make soak`), %s, hyperlet %s.\n\n",
		duration, clients, burst, time.Now().UTC().Format("2006-01-02"), version(s.bin))
	fmt.Fprintf(&b, "Each cycle: RunPodSandbox, CreateContainer + StartContainer (busybox `sh`), ExecSync, read the CRI log, StopPodSandbox + RemovePodSandbox. %d clients for %v: **%d cycles, %d failures**", clients, elapsed.Round(time.Second), cycles.Load(), failures.Load())
	if e, ok := firstErr.Load().(string); ok {
		fmt.Fprintf(&b, " (first: %s)", e)
	}
	b.WriteString(".\n\n| | start | end |\n|---|---:|---:|\n")
	fmt.Fprintf(&b, "| daemon fds | %d | %d |\n| daemon goroutines | %d | %d |\n| daemon threads | %d | %d |\n| daemon RSS, MiB | %.1f | %.1f |\n| disk under --root and --state, MiB | %.1f | %.1f |\n| host MemAvailable, MiB | %d | %d |\n| pods listed | %d | %d |\n| QEMU processes (warm pool) | %d | %d |\n",
		begin.fds, end.fds, begin.goroutines, end.goroutines, begin.threads, end.threads,
		float64(begin.rssKiB)/1024, float64(end.rssKiB)/1024, float64(begin.diskKiB)/1024, float64(end.diskKiB)/1024,
		begin.memAvailableMiB, end.memAvailableMiB, begin.pods, end.pods, begin.vms, end.vms)
	fmt.Fprintf(&b, "\nLeft after the churn (netns, pod directories, QEMUs or share directories beyond the warm pool): %s.\n", none(leftAfterChurn))
	fmt.Fprintf(&b, "\n**kill -9 during %d concurrent RunPodSandbox calls:** %d starts had returned when the daemon was killed; after the restart %d pods were listed, **%d of the returned starts lost**; after removing them all through the CRI, left: %s.\n",
		burst, len(confirmed), listed, lost, none(leftAfterBurst))
	var errs []string
	if lost > 0 {
		errs = append(errs, fmt.Sprintf("%d pods lost", lost))
	}
	if len(leftAfterChurn)+len(leftAfterBurst) > 0 {
		errs = append(errs, "leaks")
	}
	if len(errs) > 0 {
		return b.String(), fmt.Errorf("soak failed: %s", strings.Join(errs, ", "))
	}
	return b.String(), nil
}

func none(l []string) string {
	if len(l) == 0 {
		return "nothing"
	}
	return strings.Join(l, ", ")
}

func version(bin string) string {
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(out))
}
