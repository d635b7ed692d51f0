package integration

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hyperlet/hyperlet/pkg/vm/qemu"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// kubeBinary builds (once per machine, cached) a Kubernetes binary or etcd
// from its Go module with hack/kube.sh; HYPERLET_KUBE_DIR names a directory
// that has them instead.
func kubeBinary(t *testing.T, name string) string {
	t.Helper()
	if d := os.Getenv("HYPERLET_KUBE_DIR"); d != "" {
		return filepath.Join(d, name)
	}
	out, err := exec.Command("../../hack/kube.sh", name).Output()
	if err != nil {
		t.Fatalf("hack/kube.sh %s: %v", name, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return filepath.Join(lines[len(lines)-1], name)
}

const kubeletNode = "hlnode"

// webPod is a static pod: an HTTP server, a container that keeps crashing,
// and one whose exec liveness probe starts failing after a few seconds.
const webPod = `apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default}
spec:
  restartPolicy: Always
  terminationGracePeriodSeconds: 2
  containers:
  - name: httpd
    image: %[1]s
    command: ["httpd", "-f", "-p", "80", "-h", "/etc"]
  - name: crasher
    image: %[1]s
    command: ["sh", "-c", "echo run; sleep 1; exit 1"]
  - name: probed
    image: %[1]s
    command: ["sh", "-c", "touch /tmp/healthy; sleep 5; rm /tmp/healthy; sleep 1000"]
    livenessProbe:
      exec: {command: ["cat", "/tmp/healthy"]}
      periodSeconds: 2
      failureThreshold: 1
`

// TestKubeletStandalone runs a real kubelet (no API server: a static pod
// from a manifest directory) against hyperlet: the pod runs with its IP,
// logs land where kubelet reads them, a crashing container is restarted and
// its restart count grows, an exec liveness probe restarts a container, and
// removing the manifest tears the pod down with nothing left.
func TestKubeletStandalone(t *testing.T) {
	d := startCRI(t)
	kubelet := kubeBinary(t, "kubelet")
	ctx := testCtx(t, 8*time.Minute)
	d.pull(ctx)

	dir := d.dir
	manifests, podLogs, rootDir := filepath.Join(dir, "manifests"), filepath.Join(dir, "pod-logs"), filepath.Join(dir, "kubelet")
	for _, p := range []string{manifests, podLogs, rootDir} {
		os.MkdirAll(p, 0o755)
	}
	cfg := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: %s
containerRuntimeEndpoint: unix://%s
podLogsDir: %s
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
failCgroupV1: false
makeIPTablesUtilChains: false
runtimeRequestTimeout: 5m
address: 127.0.0.1
healthzBindAddress: 127.0.0.1
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
port: 10290
readOnlyPort: 0
healthzPort: 10291
fileCheckFrequency: 2s
syncFrequency: 5s
evictionHard: {}
`, manifests, d.socket, podLogs)
	cfgFile := filepath.Join(dir, "kubelet.yaml")
	os.WriteFile(cfgFile, []byte(cfg), 0o644)
	var klog lockedWriter
	klog.b = &strings.Builder{}
	before := kubeChains()
	t.Cleanup(func() { removeKubeChains(before) })
	cmd := exec.Command(kubelet, "--config", cfgFile, "--root-dir", rootDir, "--hostname-override", kubeletNode, "-v", "2")
	cmd.Stdout, cmd.Stderr = &klog, &klog
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		// kubelet bind-mounts its root directory onto itself.
		syscall.Unmount(rootDir, syscall.MNT_DETACH)
		if t.Failed() {
			s := klog.b.String()
			if len(s) > 20000 {
				s = s[len(s)-20000:]
			}
			t.Logf("kubelet log (tail):\n%s", s)
		}
	})
	manifest := filepath.Join(manifests, "web.yaml")
	os.WriteFile(manifest, []byte(fmt.Sprintf(webPod, testImage)), 0o644)

	poll := func(what string, fn func() (bool, string)) {
		t.Helper()
		pollUntil(t, ctx, 500*time.Millisecond, what, fn)
	}
	var pod *runtimeapi.PodSandbox
	poll("pod ready", func() (bool, string) {
		l, err := d.rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
			LabelSelector: map[string]string{"io.kubernetes.pod.name": "web-" + kubeletNode}}})
		if err != nil || len(l.Items) == 0 {
			return false, fmt.Sprint(err)
		}
		pod = l.Items[0]
		return pod.State == runtimeapi.PodSandboxState_SANDBOX_READY, pod.State.String()
	})
	ps, err := d.rs.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod.Id})
	if err != nil {
		t.Fatal(err)
	}
	ip := ps.Status.Network.GetIp()
	_, subnet, _ := net.ParseCIDR(testSubnet)
	if !subnet.Contains(net.ParseIP(ip)) {
		t.Fatalf("pod IP %q", ip)
	}

	attempts := func(name string) (max uint32, running bool) {
		l, _ := d.rs.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
			PodSandboxId: pod.Id, LabelSelector: map[string]string{"io.kubernetes.container.name": name}}})
		for _, c := range l.GetContainers() {
			if c.Metadata.Attempt >= max {
				max = c.Metadata.Attempt
				running = c.State == runtimeapi.ContainerState_CONTAINER_RUNNING
			}
		}
		return
	}
	poll("httpd running", func() (bool, string) { _, r := attempts("httpd"); return r, "" })
	poll("HTTP on the pod IP", func() (bool, string) {
		resp, err := (&http.Client{Timeout: 2 * time.Second}).Get("http://" + ip + "/hostname")
		if err != nil {
			return false, err.Error()
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return strings.TrimSpace(string(b)) == "web-"+kubeletNode || strings.TrimSpace(string(b)) == "web", string(b)
	})
	poll("crasher restarted twice", func() (bool, string) { a, _ := attempts("crasher"); return a >= 2, fmt.Sprint(a) })
	poll("liveness probe restart", func() (bool, string) { a, _ := attempts("probed"); return a >= 1, fmt.Sprint(a) })

	// Logs: kubelet's layout, CRI format, one file per attempt (kubelet
	// keeps the latest ones).
	logDir := filepath.Join(podLogs, fmt.Sprintf("default_web-%s_%s", kubeletNode, pod.Metadata.Uid), "crasher")
	logs, _ := filepath.Glob(filepath.Join(logDir, "*.log"))
	if len(logs) == 0 {
		t.Errorf("no crasher logs in %s", logDir)
	}
	withRun := 0 // the newest attempt's file may not have its line yet
	for _, f := range logs {
		if b, _ := os.ReadFile(f); strings.Contains(string(b), " stdout F run\n") {
			withRun++
		}
	}
	if withRun == 0 {
		t.Errorf("no crasher log holds its output: %v", logs)
	}

	// Removing the manifest tears everything down.
	os.Remove(manifest)
	poll("pod removed", func() (bool, string) {
		l, err := d.rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
		return err == nil && len(l.Items) == 0, fmt.Sprint(len(l.GetItems()))
	})
	if left := qemu.RunningPIDs(d.state); len(left) != 0 {
		t.Errorf("QEMU left: %v", left)
	}
	if _, err := os.Stat("/var/run/netns/hyperlet-" + pod.Id[:16]); !os.IsNotExist(err) {
		t.Errorf("netns left: %v", err)
	}
	if mi, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mi), d.state) {
		t.Errorf("mounts left under %s", d.state)
	}
}

// kubeChains lists kubelet's iptables chains ("iptables TABLE CHAIN").
func kubeChains() map[string]bool {
	out := map[string]bool{}
	for _, bin := range []string{"iptables", "ip6tables"} {
		for _, table := range []string{"filter", "nat", "mangle"} {
			b, _ := exec.Command(bin, "-t", table, "-S").Output()
			for _, line := range strings.Split(string(b), "\n") {
				if c, ok := strings.CutPrefix(line, "-N KUBE-"); ok {
					out[bin+" "+table+" KUBE-"+c] = true
				}
			}
		}
	}
	return out
}

// removeKubeChains deletes the chains kubelet added during the test (its
// canary and firewall chains), so the host is left as it was.
func removeKubeChains(before map[string]bool) {
	for c := range kubeChains() {
		if before[c] {
			continue
		}
		f := strings.Fields(c)
		for _, parent := range []string{"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"} {
			exec.Command(f[0], "-t", f[1], "-D", parent, "-j", f[2]).Run()
		}
		exec.Command(f[0], "-t", f[1], "-F", f[2]).Run()
		exec.Command(f[0], "-t", f[1], "-X", f[2]).Run()
	}
}
