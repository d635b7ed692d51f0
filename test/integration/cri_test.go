package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"k8s.io/client-go/tools/remotecommand"

	"github.com/hyperlet/hyperlet/pkg/imageservice/imagetest"
	"github.com/hyperlet/hyperlet/pkg/vm/qemu"
)

// The CRI suite runs the hyperlet daemon as kubelet would: a real binary on
// a unix socket, the production initrd (agent and runc, no busybox), images
// pulled from a real registry (Debian's docker-registry) reached as a
// mirror of registry.k8s.io.

const testImage = "registry.k8s.io/hyperlet-test/busybox:1"

var (
	daemonOnce sync.Once
	daemonBin  string
	daemonErr  error
)

func hyperletBinary(t *testing.T) string {
	t.Helper()
	daemonOnce.Do(func() {
		dir, err := os.MkdirTemp("", "hyperlet-bin-")
		if err != nil {
			daemonErr = err
			return
		}
		daemonBin = filepath.Join(dir, "hyperlet")
		out, err := exec.Command("go", "build", "-o", daemonBin, "../../cmd/hyperlet").CombinedOutput()
		if err != nil {
			daemonErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if daemonErr != nil {
		t.Fatal(daemonErr)
	}
	return daemonBin
}

func prodInitrd() string {
	return envOr("HYPERLET_INITRD", filepath.Join(outputDir(), "initrd.img"))
}

type criDaemon struct {
	t                        *testing.T
	dir, socket, root, state string
	config                   string
	cmd                      *exec.Cmd
	log                      *strings.Builder
	conn                     *grpc.ClientConn
	rs                       runtimeapi.RuntimeServiceClient
	is                       runtimeapi.ImageServiceClient
	env                      []string // extra environment of the daemon
	reg                      *imagetest.Registry
}

// startCRI starts a registry holding the busybox test image and a hyperlet
// daemon that mirrors registry.k8s.io to it.
// startCRI starts hyperlet with VM templates on (one template directory
// for the whole test binary, so most pods are clones) and the warm pool off;
// vmConf adds lines to the [vm] table.
func startCRI(t *testing.T, vmConf ...string) *criDaemon {
	t.Helper()
	requireVM(t)
	if _, err := os.Stat(prodInitrd()); err != nil {
		t.Fatalf("CRI tests need the initrd (make guest): %v", err)
	}
	accel := resolveAccel(t)
	reg := imagetest.StartRegistry(t, "", "")
	reg.Push(t, "hyperlet-test/busybox:1", imagetest.BusyboxImage(t))
	dir := runDir(t)
	d := &criDaemon{t: t, dir: dir, socket: filepath.Join(dir, "cri.sock"), reg: reg,
		root: filepath.Join(dir, "root"), state: filepath.Join(dir, "state"), config: filepath.Join(dir, "config.toml")}
	cniDir := writeCNIConfig(t, dir)
	for _, def := range []string{"template_dir = " + strconv.Quote(criTemplates), "pool_size = 0"} {
		key := strings.Fields(def)[0]
		if !slices.ContainsFunc(vmConf, func(l string) bool { return strings.Fields(l)[0] == key }) {
			vmConf = append(vmConf, def)
		}
	}
	// "jail.key = value" and "host_runtime.key = value" lines go to their
	// sections; without a host runtime endpoint, it is off.
	var jailConf, hostConf, nriConf, topConf []string
	vmConf = slices.DeleteFunc(vmConf, func(l string) bool {
		if k, ok := strings.CutPrefix(l, "top."); ok {
			topConf = append(topConf, k)
			return true
		}
		if k, ok := strings.CutPrefix(l, "jail."); ok {
			jailConf = append(jailConf, k)
			return true
		}
		if k, ok := strings.CutPrefix(l, "host_runtime."); ok {
			hostConf = append(hostConf, k)
			return true
		}
		if k, ok := strings.CutPrefix(l, "nri."); ok {
			nriConf = append(nriConf, k)
			return true
		}
		return false
	})
	if len(hostConf) == 0 {
		hostConf = []string{"enabled = false"}
	}
	cfg := fmt.Sprintf(strings.Join(topConf, "\n")+"\n[vm]\nkernel = %q\ninitrd = %q\naccel = %q\n"+strings.Join(vmConf, "\n")+"\n\n[jail]\n"+strings.Join(jailConf, "\n")+"\n\n[host_runtime]\n"+strings.Join(hostConf, "\n")+"\n\n[nri]\n"+strings.Join(nriConf, "\n")+"\n\n[cni]\nconf_dir = %q\nbin_dirs = [\"/usr/lib/cni\"]\n\n[registry.mirrors.\"registry.k8s.io\"]\nendpoint = [\"http://%s\"]\n",
		kernel(), prodInitrd(), accel, cniDir, reg.Host)
	if err := os.WriteFile(d.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	d.start()
	t.Cleanup(func() {
		// Pods a failed test left are removed by the runtime itself, so
		// their network namespaces and mounts go too.
		if d.cmd != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			if list, err := d.rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err == nil {
				for _, p := range list.Items {
					d.rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.Id})
				}
			}
			cancel()
		}
		d.stop(syscall.SIGKILL)
		// Whatever a test left, no pod VM may outlive it.
		killVMsUnder(d.state)
		exec.Command("ip", "link", "del", "hlt0").Run() // the test network's bridge
		if t.Failed() {
			t.Logf("hyperlet log:\n%s", d.log)
		}
	})
	return d
}

// testSubnet is the pod network of the CRI tests: a bridge with
// host-local addresses and portmap for hostPorts (Debian's plugins).
const testSubnet = "10.77.0.0/24"

func writeCNIConfig(t *testing.T, dir string) string {
	t.Helper()
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		t.Fatalf("CRI tests need Debian's containernetworking-plugins: %v", err)
	}
	confDir := filepath.Join(dir, "cni")
	os.MkdirAll(confDir, 0o755)
	conf := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "hyperlet-test",
  "plugins": [
    {"type": "bridge", "bridge": "hlt0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": %q}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}`, filepath.Join(dir, "ipam"), testSubnet)
	if err := os.WriteFile(filepath.Join(confDir, "10-hyperlet-test.conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return confDir
}

func (d *criDaemon) start() {
	t := d.t
	t.Helper()
	d.log = &strings.Builder{}
	d.cmd = exec.Command(hyperletBinary(t), "--config", d.config, "--socket", d.socket,
		"--root", d.root, "--state", d.state, "-v", "2")
	d.cmd.Stderr = &lockedWriter{b: d.log}
	d.cmd.Env = append(os.Environ(), d.env...)
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		// The socket file of a killed daemon may linger: wait for answers.
		if c, err := net.Dial("unix", d.socket); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("hyperlet did not create its socket:\n%s", d.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix://"+d.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	d.conn = conn
	d.rs = runtimeapi.NewRuntimeServiceClient(conn)
	d.is = runtimeapi.NewImageServiceClient(conn)
}

func (d *criDaemon) stop(sig syscall.Signal) {
	if d.cmd == nil {
		return
	}
	d.conn.Close()
	d.cmd.Process.Signal(sig)
	d.cmd.Wait()
	d.cmd = nil
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type lockedWriter struct {
	mu sync.Mutex
	b  *strings.Builder
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// killVMsUnder kills QEMU processes whose command line names dir.
func killVMsUnder(dir string) {
	for _, pid := range qemu.RunningPIDs(dir) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

func (d *criDaemon) pull(ctx context.Context) string {
	d.t.Helper()
	r, err := d.is.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: testImage}})
	if err != nil {
		d.t.Fatal(err)
	}
	return r.ImageRef
}

func podConfig(name string) *runtimeapi.PodSandboxConfig {
	return &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "default", Uid: name + "-uid"},
		Hostname:     name + "-host",
		LogDirectory: "",
		DnsConfig:    &runtimeapi.DNSConfig{Servers: []string{"10.96.0.10"}, Searches: []string{"default.svc.cluster.local"}, Options: []string{"ndots:5"}},
		Labels:       map[string]string{"app": name},
		Annotations:  map[string]string{"note": "hyperlet test"},
		// No namespace options: PID mode POD, one PID namespace for the pod.
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{}},
	}
}

func (d *criDaemon) runPod(ctx context.Context, cfg *runtimeapi.PodSandboxConfig) string {
	d.t.Helper()
	r, err := d.rs.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		d.t.Fatalf("RunPodSandbox: %v", err)
	}
	return r.PodSandboxId
}

func ctrConfig(name string, cmd ...string) *runtimeapi.ContainerConfig {
	return &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: name},
		Image:    &runtimeapi.ImageSpec{Image: testImage},
		Command:  cmd,
		LogPath:  name + ".log",
		Labels:   map[string]string{"ctr": name},
	}
}

func (d *criDaemon) createStart(ctx context.Context, pod string, podCfg *runtimeapi.PodSandboxConfig, cfg *runtimeapi.ContainerConfig) string {
	d.t.Helper()
	r, err := d.rs.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: pod, Config: cfg, SandboxConfig: podCfg})
	if err != nil {
		d.t.Fatalf("CreateContainer %s: %v", cfg.Metadata.Name, err)
	}
	if _, err := d.rs.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: r.ContainerId}); err != nil {
		d.t.Fatalf("StartContainer %s: %v", cfg.Metadata.Name, err)
	}
	return r.ContainerId
}

func (d *criDaemon) status(ctx context.Context, id string) *runtimeapi.ContainerStatus {
	d.t.Helper()
	r, err := d.rs.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
	if err != nil {
		d.t.Fatalf("ContainerStatus: %v", err)
	}
	return r.Status
}

// waitExited polls until the container has exited.
func (d *criDaemon) waitExited(ctx context.Context, id string) *runtimeapi.ContainerStatus {
	d.t.Helper()
	for {
		st := d.status(ctx, id)
		if st.State == runtimeapi.ContainerState_CONTAINER_EXITED {
			return st
		}
		select {
		case <-ctx.Done():
			d.t.Fatalf("container %s did not exit: %+v", id, st)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (d *criDaemon) exec(ctx context.Context, id string, timeout int64, cmd ...string) (*runtimeapi.ExecSyncResponse, error) {
	return d.rs.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: cmd, Timeout: timeout})
}

func wantCode(t *testing.T, what string, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Errorf("%s: got %v, want code %v", what, err, code)
	}
}

// TestCRIPodLifecycle drives a pod through the CRI: pod VM with hostname and
// DNS, containers with users from the image, logs in the CRI format, exec
// with exit codes and timeouts, stats, stop with SIGTERM, OOM, events, and
// removal that leaves nothing behind.
func TestCRIPodLifecycle(t *testing.T) {
	d := startCRI(t)
	ctx := testCtx(t, 5*time.Minute)
	imageID := d.pull(ctx)

	events, err := d.rs.GetContainerEvents(ctx, &runtimeapi.GetEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	podCfg := podConfig("lifecycle")
	podCfg.LogDirectory = filepath.Join(d.dir, "logs")
	pod := d.runPod(ctx, podCfg)
	ps, err := d.rs.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod, Verbose: true})
	if err != nil || ps.Status.State != runtimeapi.PodSandboxState_SANDBOX_READY || ps.Status.Metadata.Name != "lifecycle" {
		t.Fatalf("PodSandboxStatus = %v, %v", ps, err)
	}
	list, _ := d.rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{LabelSelector: map[string]string{"app": "lifecycle"}}})
	if len(list.Items) != 1 || list.Items[0].Id != pod {
		t.Fatalf("ListPodSandbox by label = %v", list.Items)
	}

	main := ctrConfig("main", "sh", "-c", "echo hello; echo oops >&2; id; trap 'echo bye; exit 0' TERM; while :; do sleep 0.1; done")
	main.Linux = &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
		RunAsUsername:    "app",
		NamespaceOptions: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_CONTAINER},
		Seccomp:          &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault},
	}}
	main.Envs = []*runtimeapi.KeyValue{{Key: "FROM_CRI", Value: []byte("yes")}}
	cid := d.createStart(ctx, pod, podCfg, main)
	st := d.status(ctx, cid)
	if st.State != runtimeapi.ContainerState_CONTAINER_RUNNING || st.ImageId != imageID || st.LogPath != filepath.Join(podCfg.LogDirectory, "main.log") {
		t.Fatalf("ContainerStatus = %+v", st)
	}

	// Exec: output, exit codes, the pod's identity, environment, timeout.
	r, err := d.exec(ctx, cid, 0, "sh", "-c", "cat /etc/hostname /etc/resolv.conf; echo $FROM_CRI $IMAGE_ENV; id -u; exit 3")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"lifecycle-host", "nameserver 10.96.0.10", "search default.svc.cluster.local", "options ndots:5", "yes from-image", "1000"} {
		if !strings.Contains(string(r.Stdout), want) {
			t.Errorf("exec output lacks %q:\n%s", want, r.Stdout)
		}
	}
	if r.ExitCode != 3 {
		t.Errorf("exec exit code %d, want 3", r.ExitCode)
	}
	_, err = d.exec(ctx, cid, 1, "sleep", "30")
	wantCode(t, "exec past its timeout", err, codes.DeadlineExceeded)

	// Logs land on the host in the CRI format.
	logFile := filepath.Join(podCfg.LogDirectory, "main.log")
	var logs string
	for i := 0; i < 100 && !strings.Contains(logs, "uid=1000"); i++ {
		b, _ := os.ReadFile(logFile)
		logs = string(b)
		time.Sleep(50 * time.Millisecond)
	}
	for _, want := range []string{" stdout F hello\n", " stderr F oops\n", " stdout F uid=1000(app) gid=1000(app) groups=1000(app),2000(extra)\n"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}

	stats, err := d.rs.ContainerStats(ctx, &runtimeapi.ContainerStatsRequest{ContainerId: cid})
	if err != nil || stats.Stats.Memory.GetWorkingSetBytes().GetValue() == 0 || stats.Stats.Cpu.GetUsageCoreNanoSeconds().GetValue() == 0 {
		t.Errorf("ContainerStats = %v, %v", stats, err)
	}
	podStats, err := d.rs.PodSandboxStats(ctx, &runtimeapi.PodSandboxStatsRequest{PodSandboxId: pod})
	if err != nil || len(podStats.Stats.Linux.Containers) != 1 {
		t.Errorf("PodSandboxStats = %v, %v", podStats, err)
	}

	// OOM: the container dies with 137 / OOMKilled, the pod lives on.
	oomCfg := ctrConfig("oom", "awk", "BEGIN { s = \"xxxxxxxxxxxxxxxx\"; while (1) s = s s }")
	oomCfg.Linux = &runtimeapi.LinuxContainerConfig{Resources: &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 32 << 20}}
	oom := d.createStart(ctx, pod, podCfg, oomCfg)
	ost := d.waitExited(ctx, oom)
	if ost.ExitCode != 137 || ost.Reason != "OOMKilled" {
		t.Errorf("OOM container: exit %d reason %q", ost.ExitCode, ost.Reason)
	}
	if r, err := d.exec(ctx, cid, 0, "echo", "alive"); err != nil || string(r.Stdout) != "alive\n" {
		t.Errorf("exec after OOM in a sibling: %v %v", r, err)
	}

	// Stop: SIGTERM is handled by the trap.
	if _, err := d.rs.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: cid, Timeout: 30}); err != nil {
		t.Fatal(err)
	}
	st = d.status(ctx, cid)
	if st.State != runtimeapi.ContainerState_CONTAINER_EXITED || st.ExitCode != 0 || st.Reason != "Completed" || st.FinishedAt < st.StartedAt {
		t.Errorf("stopped container: %+v", st)
	}
	if b, _ := os.ReadFile(logFile); !strings.Contains(string(b), " stdout F bye\n") {
		t.Errorf("log lacks the trap's output:\n%s", b)
	}
	// Stop and remove are idempotent.
	if _, err := d.rs.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: cid}); err != nil {
		t.Errorf("second stop: %v", err)
	}

	// Events for main: created, started, stopped.
	seen := map[runtimeapi.ContainerEventType]bool{}
	for len(seen) < 3 {
		ev, err := events.Recv()
		if err != nil {
			t.Fatalf("events: %v", err)
		}
		if ev.ContainerId == cid {
			seen[ev.ContainerEventType] = true
		}
	}

	vmPIDs := qemu.RunningPIDs(d.state)
	if len(vmPIDs) != 1 {
		t.Fatalf("want one QEMU for the pod, found %v", vmPIDs)
	}
	if _, err := d.rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{cid, oom} {
		_, err := d.rs.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
		wantCode(t, "status of a removed container", err, codes.NotFound)
	}
	if left := qemu.RunningPIDs(d.state); len(left) != 0 {
		t.Errorf("QEMU left after RemovePodSandbox: %v", left)
	}
	for _, dir := range []string{filepath.Join(d.state, "vms"), filepath.Join(d.root, "pods")} {
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Errorf("%s not empty after RemovePodSandbox: %v", dir, ents)
		}
	}
	for _, call := range []func() error{
		func() error {
			_, err := d.rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod})
			return err
		},
		func() error {
			_, err := d.rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod})
			return err
		},
		func() error {
			_, err := d.rs.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: cid})
			return err
		},
	} {
		if err := call(); err != nil {
			t.Errorf("idempotent stop/remove of a removed object: %v", err)
		}
	}
}

// TestCRIBadInput: clear gRPC codes, and the daemon keeps serving.
func TestCRIBadInput(t *testing.T) {
	d := startCRI(t)
	ctx := testCtx(t, 3*time.Minute)
	d.pull(ctx)

	hostNet := podConfig("hostnet")
	hostNet.Linux.SecurityContext.NamespaceOptions = &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}
	_, err := d.rs.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: hostNet})
	wantCode(t, "host network pod", err, codes.FailedPrecondition)
	_, err = d.rs.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: &runtimeapi.PodSandboxConfig{}})
	wantCode(t, "pod without metadata", err, codes.InvalidArgument)

	podCfg := podConfig("bad")
	pod := d.runPod(ctx, podCfg)
	_, err = d.rs.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podCfg})
	wantCode(t, "pod with a taken name", err, codes.AlreadyExists)

	missing := ctrConfig("missing-image", "true")
	missing.Image.Image = "registry.k8s.io/hyperlet-test/absent:1"
	_, err = d.rs.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: pod, Config: missing, SandboxConfig: podCfg})
	wantCode(t, "container of an image not pulled", err, codes.NotFound)
	_, err = d.rs.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: "nope", Config: ctrConfig("x", "true"), SandboxConfig: podCfg})
	wantCode(t, "container in a missing pod", err, codes.NotFound)
	badCap := ctrConfig("badcap", "true")
	badCap.Linux = &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
		Capabilities: &runtimeapi.Capability{AddCapabilities: []string{"CAP_NOT_A_THING"}}}}
	_, err = d.rs.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: pod, Config: badCap, SandboxConfig: podCfg})
	wantCode(t, "unknown capability", err, codes.InvalidArgument)

	// A command that does not exist fails StartContainer, clearly.
	noCmd := ctrConfig("nocmd", "/no/such/binary")
	r, err := d.rs.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: pod, Config: noCmd, SandboxConfig: podCfg})
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.rs.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: r.ContainerId})
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "no such file") {
		t.Errorf("start of a missing binary: %v", err)
	}
	if st := d.status(ctx, r.ContainerId); st.State != runtimeapi.ContainerState_CONTAINER_EXITED || st.Reason != "StartError" {
		t.Errorf("failed start left %+v", st)
	}
	_, err = d.rs.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: r.ContainerId})
	wantCode(t, "start of an exited container", err, codes.FailedPrecondition)
	_, err = d.exec(ctx, r.ContainerId, 0, "true")
	wantCode(t, "exec in an exited container", err, codes.FailedPrecondition)
	_, err = d.rs.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: "nope"})
	wantCode(t, "status of a missing container", err, codes.NotFound)
	_, err = d.rs.CheckpointContainer(ctx, &runtimeapi.CheckpointContainerRequest{ContainerId: r.ContainerId})
	wantCode(t, "checkpoint", err, codes.Unimplemented)

	// Still serving: a container runs fine afterwards.
	ok := d.createStart(ctx, pod, podCfg, ctrConfig("ok", "sh", "-c", "exit 4"))
	if st := d.waitExited(ctx, ok); st.ExitCode != 4 || st.Reason != "Error" {
		t.Errorf("container after bad input: %+v", st)
	}
	if _, err := d.rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatal(err)
	}
}

// TestCRIDaemonRestart kills the daemon with SIGKILL while pods run and
// starts it again: pods and containers are listed with their state, an exit
// that happened meanwhile is reported, exec and logs still work.
func TestCRIDaemonRestart(t *testing.T) {
	d := startCRI(t)
	ctx := testCtx(t, 4*time.Minute)
	d.pull(ctx)
	podCfg := podConfig("restart")
	podCfg.LogDirectory = filepath.Join(d.dir, "logs")
	pod := d.runPod(ctx, podCfg)
	longCfg := ctrConfig("long", "sh", "-c", "echo first; read x; echo second $x; sleep 1000")
	longCfg.Stdin = true
	// A propagating volume: the host mounts a root-only directory in it
	// while the daemon is down.
	prop, flags := filepath.Join(t.TempDir(), "prop"), t.TempDir()
	os.MkdirAll(filepath.Join(prop, "mnt"), 0o700)
	os.Chmod(flags, 0o700)
	os.WriteFile(filepath.Join(flags, "flagFile"), nil, 0o600)
	if err := syscall.Mount(prop, prop, "", syscall.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Unmount(prop, syscall.MNT_DETACH) })
	if err := syscall.Mount("", prop, "", syscall.MS_SHARED, ""); err != nil {
		t.Fatal(err)
	}
	longCfg.Mounts = []*runtimeapi.Mount{{ContainerPath: "/prop", HostPath: prop, Propagation: runtimeapi.MountPropagation_PROPAGATION_HOST_TO_CONTAINER}}
	long := d.createStart(ctx, pod, podCfg, longCfg)
	short := d.createStart(ctx, pod, podCfg, ctrConfig("short", "sh", "-c", "echo going; sleep 3; echo gone; exit 4"))

	d.stop(syscall.SIGKILL)
	if err := syscall.Mount(flags, filepath.Join(prop, "mnt"), "", syscall.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Unmount(filepath.Join(prop, "mnt"), syscall.MNT_DETACH) })
	time.Sleep(4 * time.Second) // short exits while nobody watches
	d.start()

	list, err := d.rs.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{PodSandboxId: pod}})
	if err != nil || len(list.Containers) != 2 {
		t.Fatalf("ListContainers after restart = %v, %v", list, err)
	}
	ps, err := d.rs.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod})
	if err != nil || ps.Status.State != runtimeapi.PodSandboxState_SANDBOX_READY {
		t.Fatalf("pod after restart: %v, %v", ps, err)
	}
	st := d.waitExited(ctx, short)
	if st.ExitCode != 4 {
		t.Errorf("exit during downtime: %+v", st)
	}
	if st := d.status(ctx, long); st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Errorf("long-running container after restart: %+v", st)
	}
	if r, err := d.exec(ctx, long, 0, "echo", "still here"); err != nil || string(r.Stdout) != "still here\n" {
		t.Errorf("exec after restart: %v %v", r, err)
	}
	if r, err := d.exec(ctx, long, 0, "ls", "-A", "/prop/mnt"); err != nil || string(r.Stdout) != "flagFile\n" {
		t.Errorf("host mount made while the daemon was down, after restart: %v %v stderr %q", r, err, r.GetStderr())
	}
	// Attach to the container started before the restart: its stdin and
	// output are still connected.
	ar, err := d.rs.Attach(ctx, &runtimeapi.AttachRequest{ContainerId: long, Stdin: true, Stdout: true, Stderr: true})
	if err != nil {
		t.Fatal(err)
	}
	var attached lockedBuffer
	actx, cancel := context.WithCancel(ctx)
	go executor(t, ar.Url, false).StreamWithContext(actx, remotecommand.StreamOptions{
		Stdin: strings.NewReader("hello\n"), Stdout: &attached, Stderr: io.Discard})
	for i := 0; i < 100 && !strings.Contains(attached.String(), "second hello"); i++ {
		time.Sleep(100 * time.Millisecond)
	}
	cancel()
	if !strings.Contains(attached.String(), "second hello\n") {
		t.Errorf("attach after restart got %q", attached.String())
	}
	b, _ := os.ReadFile(filepath.Join(podCfg.LogDirectory, "long.log"))
	if !strings.Contains(string(b), " stdout F first\n") || !strings.Contains(string(b), " stdout F second hello\n") {
		t.Errorf("log of the long container across the restart:\n%s", b)
	}
	b, _ = os.ReadFile(filepath.Join(podCfg.LogDirectory, "short.log"))
	if !strings.Contains(string(b), " stdout F going\n") || !strings.Contains(string(b), " stdout F gone\n") {
		t.Errorf("log of the container that exited during downtime:\n%s", b)
	}
	if _, err := d.rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatal(err)
	}
	if left := qemu.RunningPIDs(d.state); len(left) != 0 {
		t.Errorf("QEMU left after RemovePodSandbox: %v", left)
	}
}

// TestCRIVolumes: host directories and files reach containers through the
// pod's shared directory, read-write and read-only, and nothing stays
// mounted once the pod is removed; the host files stay.
func TestCRIVolumes(t *testing.T) {
	d := startCRI(t)
	ctx := testCtx(t, 3*time.Minute)
	d.pull(ctx)
	host := t.TempDir()
	rw, ro := filepath.Join(host, "rw"), filepath.Join(host, "ro")
	os.Mkdir(rw, 0o755)
	os.Mkdir(ro, 0o755)
	os.WriteFile(filepath.Join(ro, "data"), []byte("read-only data\n"), 0o644)
	// A mount inside a read-only volume stays writable (CRI's read-only is
	// not recursive).
	inner := filepath.Join(ro, "inner")
	os.Mkdir(inner, 0o755)
	if err := syscall.Mount("tmpfs", inner, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Unmount(inner, syscall.MNT_DETACH) })
	hostsFile := filepath.Join(host, "etc-hosts")
	os.WriteFile(hostsFile, []byte("10.1.2.3 kubelet-managed\n"), 0o644)
	// Propagating volumes, shared mounts on the host as kubelet makes
	// them, and a root-only directory to mount in them later.
	flags := filepath.Join(host, "flags")
	os.Mkdir(flags, 0o700)
	os.WriteFile(filepath.Join(flags, "flagFile"), nil, 0o600)
	propagating := map[runtimeapi.MountPropagation]string{}
	for _, p := range []runtimeapi.MountPropagation{runtimeapi.MountPropagation_PROPAGATION_HOST_TO_CONTAINER, runtimeapi.MountPropagation_PROPAGATION_BIDIRECTIONAL} {
		dir := filepath.Join(host, p.String())
		os.MkdirAll(filepath.Join(dir, "mnt"), 0o700)
		if err := syscall.Mount(dir, dir, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
		if err := syscall.Mount("", dir, "", syscall.MS_SHARED|syscall.MS_REC, ""); err != nil {
			t.Fatal(err)
		}
		propagating[p] = dir
	}

	podCfg := podConfig("volumes")
	pod := d.runPod(ctx, podCfg)
	cfg := ctrConfig("vol", "sh", "-c", "sleep 1000")
	cfg.Mounts = []*runtimeapi.Mount{
		{ContainerPath: "/data/rw", HostPath: rw},
		{ContainerPath: "/data/ro", HostPath: ro, Readonly: true, SelinuxRelabel: true},
		{ContainerPath: "/etc/hosts", HostPath: hostsFile},
		{ContainerPath: "/data/new", HostPath: filepath.Join(host, "created", "by", "runtime")},
		{ContainerPath: "/data/rro", HostPath: ro, Readonly: true, RecursiveReadOnly: true},
	}
	for p, dir := range propagating {
		cfg.Mounts = append(cfg.Mounts, &runtimeapi.Mount{ContainerPath: "/prop/" + p.String(), HostPath: dir, Propagation: p})
	}
	cid := d.createStart(ctx, pod, podCfg, cfg)

	// A mount the host makes in a propagating volume reaches the
	// container with its owners (root's 0700 directory is readable), and
	// goes when the host unmounts it; the host can remove its mount point
	// meanwhile.
	for p, dir := range propagating {
		point := filepath.Join(dir, "mnt")
		if err := syscall.Mount(flags, point, "", syscall.MS_BIND, ""); err != nil {
			t.Fatal(err)
		}
		r, err := d.exec(ctx, cid, 0, "ls", "-A", "/prop/"+p.String()+"/mnt")
		if err != nil || r.ExitCode != 0 || strings.TrimSpace(string(r.Stdout)) != "flagFile" {
			t.Errorf("%v volume after a host mount: %v %v stdout %q stderr %q", p, r, err, r.GetStdout(), r.GetStderr())
		}
		if err := syscall.Unmount(point, syscall.MNT_DETACH); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(point); err != nil {
			t.Errorf("%v volume: remove the host's mount point after unmounting it: %v", p, err)
		}
		r, err = d.exec(ctx, cid, 0, "ls", "-A", "/prop/"+p.String())
		if err != nil || r.ExitCode != 0 || len(r.Stdout) != 0 {
			t.Errorf("%v volume after the host's unmount and removal: %v %v stdout %q stderr %q", p, r, err, r.GetStdout(), r.GetStderr())
		}
	}

	r, err := d.exec(ctx, cid, 0, "sh", "-c", "echo written > /data/rw/out && cat /data/ro/data /etc/hosts && ls -d /data/new")
	if err != nil || r.ExitCode != 0 {
		t.Fatalf("exec: %v %v stderr %s", r, err, r.GetStderr())
	}
	if !strings.Contains(string(r.Stdout), "read-only data") || !strings.Contains(string(r.Stdout), "kubelet-managed") {
		t.Errorf("volume contents in the container:\n%s", r.Stdout)
	}
	if b, _ := os.ReadFile(filepath.Join(rw, "out")); string(b) != "written\n" {
		t.Errorf("host sees %q in the read-write volume", b)
	}
	r, err = d.exec(ctx, cid, 0, "sh", "-c", "echo x > /data/ro/data")
	if err != nil || r.ExitCode == 0 {
		t.Errorf("write to a read-only volume succeeded: %v %v", r, err)
	}
	if r, err := d.exec(ctx, cid, 0, "sh", "-c", "echo y > /data/ro/inner/f"); err != nil || r.ExitCode != 0 {
		t.Errorf("write to a mount inside a read-only volume: %v %v", r, err)
	}
	// Recursive read-only covers the mount inside the volume too.
	r, err = d.exec(ctx, cid, 0, "sh", "-c", "cat /data/rro/data && echo z > /data/rro/inner/g")
	if err != nil || r.ExitCode == 0 || !strings.Contains(string(r.Stdout), "read-only data") || !strings.Contains(string(r.Stderr), "Read-only file system") {
		t.Errorf("recursive read-only volume: %v %v stdout %q stderr %q", r, err, r.GetStdout(), r.GetStderr())
	}
	// The pod does not pin the host's mount point: the host unmounts and
	// removes it while the container runs (critest's cleanup does).
	if err := syscall.Unmount(inner, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(inner); err != nil {
		t.Errorf("remove a mount point inside a volume while the pod uses it: %v", err)
	}
	st, err := d.rs.Status(ctx, &runtimeapi.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range st.RuntimeHandlers {
		if h.Name == "" && !h.GetFeatures().GetRecursiveReadOnlyMounts() {
			t.Errorf("the VM handler does not advertise recursive read-only mounts: %v", h)
		}
	}
	for _, bad := range []*runtimeapi.Mount{
		{ContainerPath: "/x", HostPath: ro, RecursiveReadOnly: true},
		{ContainerPath: "/x", HostPath: ro, Readonly: true, RecursiveReadOnly: true, Propagation: runtimeapi.MountPropagation_PROPAGATION_BIDIRECTIONAL},
		{ContainerPath: "/x", HostPath: ro, Readonly: true, RecursiveReadOnly: true, Propagation: runtimeapi.MountPropagation_PROPAGATION_HOST_TO_CONTAINER},
	} {
		c := ctrConfig("badrro", "true")
		c.Mounts = []*runtimeapi.Mount{bad}
		_, err := d.rs.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: pod, Config: c, SandboxConfig: podCfg})
		wantCode(t, fmt.Sprintf("recursive read-only mount %+v", bad), err, codes.InvalidArgument)
	}
	// A stopped pod holds no volume: kubelet unmounts them before removal.
	if _, err := d.rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatal(err)
	}
	if mi, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mi), d.state) {
		t.Errorf("mounts left under %s after StopPodSandbox:\n%s", d.state, mi)
	}
	if _, err := d.rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatal(err)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), d.state) {
		t.Errorf("mounts left under %s:\n%s", d.state, mi)
	}
	if b, _ := os.ReadFile(filepath.Join(ro, "data")); string(b) != "read-only data\n" {
		t.Errorf("host file changed or lost: %q", b)
	}
	if ents, _ := os.ReadDir(filepath.Join(d.state, "shared")); len(ents) != 0 {
		t.Errorf("shared directories left: %v", ents)
	}
}

// TestCRISecurityAndResources: a shared PID namespace, read-only rootfs,
// dropped capabilities, supplemental groups, privileged containers, live
// resource updates and log reopening.
func TestCRISecurityAndResources(t *testing.T) {
	d := startCRI(t)
	ctx := testCtx(t, 4*time.Minute)
	d.pull(ctx)
	podCfg := podConfig("security")
	podCfg.LogDirectory = filepath.Join(d.dir, "logs")
	podCfg.Linux.SecurityContext.Privileged = true
	pod := d.runPod(ctx, podCfg)

	sleeper := d.createStart(ctx, pod, podCfg, ctrConfig("sleeper", "sleep", "1000"))
	locked := ctrConfig("locked", "sh", "-c", "while :; do echo tick; sleep 0.2; done")
	locked.Linux = &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
		ReadonlyRootfs:     true,
		RunAsUser:          &runtimeapi.Int64Value{Value: 1000},
		RunAsGroup:         &runtimeapi.Int64Value{Value: 3000},
		SupplementalGroups: []int64{4000},
		Capabilities:       &runtimeapi.Capability{DropCapabilities: []string{"ALL"}},
		NoNewPrivs:         true,
	}}
	lid := d.createStart(ctx, pod, podCfg, locked)

	r, err := d.exec(ctx, lid, 0, "sh", "-c", "ps -o comm; id; touch /x 2>&1; grep CapEff /proc/self/status; grep NoNewPrivs /proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	out := string(r.Stdout)
	for _, want := range []string{"sleep", "uid=1000(app) gid=3000 groups=2000(extra),3000,4000", "Read-only file system", "CapEff:\t0000000000000000", "NoNewPrivs:\t1"} {
		if !strings.Contains(out, want) {
			t.Errorf("locked container lacks %q:\n%s", want, out)
		}
	}

	// SupplementalGroupsPolicy: Merge (above) adds the image's groups for
	// the user; Strict does not. Status reports the identity either way.
	if st, err := d.rs.Status(ctx, &runtimeapi.StatusRequest{}); err != nil || !st.GetFeatures().GetSupplementalGroupsPolicy() {
		t.Errorf("Status does not advertise SupplementalGroupsPolicy: %v %v", st, err)
	}
	strict := ctrConfig("strict", "sleep", "1000")
	strict.Linux = &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
		RunAsUser:                &runtimeapi.Int64Value{Value: 1000},
		SupplementalGroups:       []int64{4000},
		SupplementalGroupsPolicy: runtimeapi.SupplementalGroupsPolicy_Strict,
	}}
	sid := d.createStart(ctx, pod, podCfg, strict)
	if r, err := d.exec(ctx, sid, 0, "id", "-G"); err != nil || string(r.Stdout) != "1000 4000\n" {
		t.Errorf("strict groups: %q %v", r.GetStdout(), err)
	}
	for _, tc := range []struct {
		id   string
		want *runtimeapi.LinuxContainerUser
	}{
		{lid, &runtimeapi.LinuxContainerUser{Uid: 1000, Gid: 3000, SupplementalGroups: []int64{2000, 3000, 4000}}},
		{sid, &runtimeapi.LinuxContainerUser{Uid: 1000, Gid: 1000, SupplementalGroups: []int64{1000, 4000}}},
		{sleeper, &runtimeapi.LinuxContainerUser{Uid: 0, Gid: 0, SupplementalGroups: []int64{0}}},
	} {
		got := d.status(ctx, tc.id).GetUser().GetLinux()
		if got != nil {
			slices.Sort(got.SupplementalGroups)
		}
		if !proto.Equal(got, tc.want) {
			t.Errorf("container %s: status user %v, want %v", tc.id, got, tc.want)
		}
	}

	priv := ctrConfig("priv", "sleep", "1000")
	priv.Linux = &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{Privileged: true}}
	pid := d.createStart(ctx, pod, podCfg, priv)
	if r, err := d.exec(ctx, pid, 0, "sh", "-c", "test -b /dev/sda && test -c /dev/ttyS0 && head -c 4 /dev/sda >/dev/null && mkdir -p /tmp/m && mount -t tmpfs t /tmp/m && echo mounted"); err != nil || string(r.Stdout) != "mounted\n" {
		t.Errorf("privileged mount: %v %v stderr %s", r, err, r.GetStderr())
	}
	if r, _ := d.exec(ctx, sleeper, 0, "sh", "-c", "mkdir -p /tmp/m && mount -t tmpfs t /tmp/m"); r == nil || r.ExitCode == 0 {
		t.Errorf("unprivileged mount succeeded: %v", r)
	}

	// Resources change live: the container's cgroup shows the new limit.
	if _, err := d.rs.UpdateContainerResources(ctx, &runtimeapi.UpdateContainerResourcesRequest{ContainerId: sleeper,
		Linux: &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 96 << 20, CpuQuota: 20000, CpuPeriod: 100000}}); err != nil {
		t.Fatal(err)
	}
	if r, err := d.exec(ctx, sleeper, 0, "cat", "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/cpu.max"); err != nil || string(r.Stdout) != "100663296\n20000 100000\n" {
		t.Errorf("limits after update: %q %v", r.GetStdout(), err)
	}
	if st := d.status(ctx, sleeper); st.Resources.GetLinux().GetMemoryLimitInBytes() != 96<<20 {
		t.Errorf("status resources after update: %v", st.Resources)
	}

	// Log rotation: rename, reopen, new lines go to the new file.
	logFile := filepath.Join(podCfg.LogDirectory, "locked.log")
	if err := os.Rename(logFile, logFile+".1"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.rs.ReopenContainerLog(ctx, &runtimeapi.ReopenContainerLogRequest{ContainerId: lid}); err != nil {
		t.Fatal(err)
	}
	var b []byte
	for i := 0; i < 50 && !strings.Contains(string(b), " stdout F tick\n"); i++ {
		time.Sleep(100 * time.Millisecond)
		b, _ = os.ReadFile(logFile)
	}
	if !strings.Contains(string(b), " stdout F tick\n") {
		t.Errorf("no output in the reopened log: %q", b)
	}
	if _, err := d.rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatal(err)
	}
}

// TestCRINetworking: pods get addresses from real CNI plugins, serve HTTP on
// their IP and, through portmap, on a hostPort; pods reach each other; and
// teardown leaves no namespace, veth or iptables rule behind.
func TestCRINetworking(t *testing.T) {
	d := startCRI(t)
	ctx := testCtx(t, 4*time.Minute)
	d.pull(ctx)

	st, err := d.rs.Status(ctx, &runtimeapi.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range st.Status.Conditions {
		if !c.Status {
			t.Errorf("condition %s not ready: %s", c.Type, c.Message)
		}
	}

	webCfg := podConfig("web")
	webCfg.PortMappings = []*runtimeapi.PortMapping{{Protocol: runtimeapi.Protocol_TCP, ContainerPort: 80, HostPort: 18080}}
	web := d.runPod(ctx, webCfg)
	httpd := d.createStart(ctx, web, webCfg, ctrConfig("httpd", "sh", "-c", "mkdir -p /tmp/www && hostname > /tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www"))
	d.checkLinkLocal(ctx, httpd)
	ps, err := d.rs.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: web})
	if err != nil {
		t.Fatal(err)
	}
	ip := ps.Status.Network.GetIp()
	_, subnet, _ := net.ParseCIDR(testSubnet)
	if !subnet.Contains(net.ParseIP(ip)) {
		t.Fatalf("pod IP %q not in %s", ip, testSubnet)
	}

	get := func(url string) string {
		c := &http.Client{Timeout: 2 * time.Second}
		var last error
		for i := 0; i < 60; i++ {
			resp, err := c.Get(url)
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				return string(b)
			}
			last = err
			time.Sleep(250 * time.Millisecond)
		}
		t.Errorf("GET %s: %v", url, last)
		return ""
	}
	if got := get("http://" + ip + "/index.html"); got != "web-host\n" {
		t.Errorf("pod IP answered %q", got)
	}
	// The bridge's address is a host address: portmap DNATs it.
	if got := get("http://10.77.0.1:18080/index.html"); got != "web-host\n" {
		t.Errorf("hostPort answered %q", got)
	}

	clientCfg := podConfig("client")
	client := d.runPod(ctx, clientCfg)
	cc := d.createStart(ctx, client, clientCfg, ctrConfig("c", "sleep", "1000"))
	r, err := d.exec(ctx, cc, 30, "wget", "-qO-", "http://"+ip+"/index.html")
	if err != nil || string(r.Stdout) != "web-host\n" {
		t.Errorf("pod to pod: %v %v stderr %s", r.GetStdout(), err, r.GetStderr())
	}
	checkPodMetrics(t, d, ctx, web)

	for _, p := range []string{web, client} {
		if _, err := d.rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p}); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat("/var/run/netns/hyperlet-" + p[:16]); !os.IsNotExist(err) {
			t.Errorf("netns of %s left: %v", p, err)
		}
	}
	if out, _ := exec.Command("ip", "-o", "link", "show", "master", "hlt0").Output(); len(out) > 0 {
		t.Errorf("veths left on the bridge:\n%s", out)
	}
	if out, _ := exec.Command("iptables-save").Output(); strings.Contains(string(out), ip) || strings.Contains(string(out), "18080") {
		t.Errorf("iptables rules left for %s:\n%s", ip, out)
	}
}
