package integration

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hyperlet/hyperlet/pkg/usage"
	"github.com/hyperlet/hyperlet/pkg/vm/qemu"
)

// TestUsageRecord runs pods for known times across a daemon SIGKILL and
// restart and checks the usage record's seconds: a pod that lives on
// through the restart is metered to its stop, one whose VM died while the
// daemon was down to the last time it was seen; hyperctl usage prints them.
func TestUsageRecord(t *testing.T) {
	d := startCRI(t)
	ctx := testCtx(t, 4*time.Minute)
	begin := time.Now()
	a := d.runPod(ctx, podConfig("usage-a"))
	b := d.runPod(ctx, podConfig("usage-b"))
	time.Sleep(3 * time.Second)

	killed := time.Now()
	d.stop(syscall.SIGKILL)
	// b's VM dies while no daemon watches.
	for _, pid := range qemu.RunningPIDs(d.state) {
		if cmd, _ := os.ReadFile(filepath.Join("/proc", itoa(pid), "cmdline")); strings.Contains(string(cmd), b[:16]) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	time.Sleep(2 * time.Second)
	d.start()
	time.Sleep(2 * time.Second)
	if _, err := d.rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: a}); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	time.Sleep(2 * time.Second)

	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(d.state, "admin.sock"))
	}}}
	resp, err := hc.Get("http://hyperlet/usage")
	if err != nil {
		t.Fatal(err)
	}
	var rep usage.Report
	err = json.NewDecoder(resp.Body).Decode(&rep)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	recs := map[string]usage.Record{}
	for _, r := range rep.Records {
		recs[r.PodID] = r
	}
	near := func(what string, got, want time.Time, tol time.Duration) {
		if d := got.Sub(want); d > tol || d < -tol {
			t.Errorf("%s = %v, want %v ± %v (off by %v)", what, got, want, tol, d)
		}
	}
	ra, rb := recs[a], recs[b]
	if ra.PodID == "" || rb.PodID == "" {
		t.Fatalf("usage records %+v", rep.Records)
	}
	near("pod a's start", ra.Start, begin, 3*time.Second)
	near("pod a's end (its stop, after the restart)", ra.End, stopped, 1500*time.Millisecond)
	near("pod b's end (its VM died while the daemon was down)", rb.End, killed, 1500*time.Millisecond)
	if s := ra.Seconds(rep.Now); s < stopped.Sub(begin).Seconds()-3 || s > stopped.Sub(begin).Seconds()+1.5 {
		t.Errorf("pod a ran %.1f s, want about %.1f", s, stopped.Sub(begin).Seconds())
	}
	if ra.VCPUs != 1 || ra.MemoryMiB != 256 || ra.CPUSeconds <= 0 || ra.Name != "usage-a" || ra.UID != "usage-a-uid" {
		t.Errorf("pod a's record %+v", ra)
	}

	hyperctl := buildHyperctl(t)
	cmd := exec.Command(hyperctl, "--endpoint", d.socket, "usage", "--format", "csv", "--since", "1h")
	cmd.Env = append(os.Environ(), "HYPERCTL_ADMIN_SOCKET="+filepath.Join(d.state, "admin.sock"))
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "pod_id,namespace,name,uid,start,end,vcpus,memory_mib,seconds") ||
		!strings.Contains(string(out), a+",default,usage-a,usage-a-uid,") {
		t.Errorf("hyperctl usage: %v\n%s", err, out)
	}
	for _, id := range []string{a, b} {
		if _, err := d.rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
			t.Fatal(err)
		}
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
