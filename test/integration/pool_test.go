package integration

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hyperlet/hyperlet/pkg/sandbox"
	"github.com/hyperlet/hyperlet/pkg/vm/qemu"
)

// vmStatus reads the templates and warm pool from verbose Status.
func (d *criDaemon) vmStatus(ctx context.Context) sandbox.VMStatus {
	d.t.Helper()
	r, err := d.rs.Status(ctx, &runtimeapi.StatusRequest{Verbose: true})
	if err != nil {
		d.t.Fatal(err)
	}
	var st sandbox.VMStatus
	if err := json.Unmarshal([]byte(r.Info["vms"]), &st); err != nil {
		d.t.Fatalf("status info %q: %v", r.Info, err)
	}
	return st
}

// waitPool waits until the warm pool is full.
func (d *criDaemon) waitPool(ctx context.Context) sandbox.VMStatus {
	d.t.Helper()
	for {
		st := d.vmStatus(ctx)
		if st.Pool.Ready == st.Pool.Size {
			return st
		}
		select {
		case <-ctx.Done():
			d.t.Fatalf("warm pool not refilled: %+v\n%s", st, d.log)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (d *criDaemon) podBoot(ctx context.Context, id string) string {
	d.t.Helper()
	r, err := d.rs.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id, Verbose: true})
	if err != nil {
		d.t.Fatal(err)
	}
	var info struct{ Boot string }
	json.Unmarshal([]byte(r.Info["info"]), &info)
	return info.Boot
}

// checkLinkLocal fails unless the container's eth0 has one IPv6 link-local
// address, the one the kernel makes from the NIC's MAC: the pod's own,
// whether its VM booted, was cloned or was warm.
func (d *criDaemon) checkLinkLocal(ctx context.Context, ctr string) {
	d.t.Helper()
	r, err := d.exec(ctx, ctr, 30, "sh", "-c", "cat /sys/class/net/eth0/address; ip -6 -o addr show dev eth0 scope link")
	if err != nil || r.ExitCode != 0 {
		d.t.Fatalf("NIC addresses: %v %v", r, err)
	}
	lines := strings.SplitN(strings.TrimSpace(string(r.Stdout)), "\n", 2)
	mac, err := net.ParseMAC(lines[0])
	if err != nil || len(lines) != 2 {
		d.t.Fatalf("NIC addresses: %q", r.Stdout)
	}
	if want := linkLocal(mac); !strings.Contains(lines[1], " "+want+"/64 ") || strings.Count(lines[1], "inet6") != 1 {
		d.t.Fatalf("IPv6 link-local of a pod with MAC %s: %q, want only %s", mac, lines[1], want)
	}
}

// linkLocal is the EUI-64 IPv6 link-local address the kernel makes from a
// MAC.
func linkLocal(mac net.HardwareAddr) string {
	ip := net.IP{0xfe, 0x80, 0, 0, 0, 0, 0, 0, mac[0] ^ 2, mac[1], mac[2], 0xff, 0xfe, mac[3], mac[4], mac[5]}
	return ip.String()
}

// warmTaps lists the warm VMs' taps in the host's network namespace.
func warmTaps() []string {
	out, _ := exec.Command("ip", "-o", "link", "show").Output()
	var taps []string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 1 && strings.HasPrefix(f[1], "hlw") {
			taps = append(taps, strings.TrimSuffix(f[1], ":"))
		}
	}
	return taps
}

// TestCRIWarmPool runs hyperlet with one warm VM (a template clone): a pod
// of the base size takes it and serves HTTP on its pod IP through the tap
// moved into its namespace; a bigger pod bypasses it; the pool refills; a
// daemon killed with warm VMs leaves none behind after its restart, and a
// graceful stop ends them.
func TestCRIWarmPool(t *testing.T) {
	d := startCRI(t, "pool_size = 1")
	ctx := testCtx(t, 6*time.Minute)
	d.pull(ctx)
	st := d.waitPool(ctx)
	if len(st.Templates) == 0 {
		t.Fatalf("pool full but no template: %+v", st)
	}

	webCfg := podConfig("warm")
	web := d.runPod(ctx, webCfg)
	if b := d.podBoot(ctx, web); b != sandbox.BootPool {
		t.Fatalf("pod of the base size booted %q, want %q", b, sandbox.BootPool)
	}
	httpd := d.createStart(ctx, web, webCfg, ctrConfig("httpd", "sh", "-c", "mkdir -p /tmp/www && hostname > /tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www"))
	ps, err := d.rs.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: web})
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ps.Status.Network.GetIp() + "/index.html"
	var got string
	for i := 0; i < 60 && got == ""; i++ {
		if resp, err := (&http.Client{Timeout: 2 * time.Second}).Get(url); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			got = string(b)
		} else {
			time.Sleep(250 * time.Millisecond)
		}
	}
	if got != "warm-host\n" {
		t.Fatalf("GET %s from a warm VM pod: %q", url, got)
	}
	// The warm VM's NIC was up before the pod was known, under another
	// MAC (the template's, shared by every clone).
	d.checkLinkLocal(ctx, httpd)
	// A clone's RAM is the template's sealed file, so its guest does not
	// report free pages (QEMU could only try to punch holes in that file);
	// the pod shares the PID namespace of the holder its template started.
	r, err := d.exec(ctx, httpd, 30, "sh", "-c", "cat /sys/module/page_reporting/parameters/page_reporting_order; tr '\\0' ' ' < /proc/1/cmdline")
	if err != nil || r.ExitCode != 0 || string(r.Stdout) != "11\n/init pause " {
		t.Fatalf("warm VM pod: reporting order and PID 1 %q, want %q: %v %v", r.GetStdout(), "11\n/init pause ", r, err)
	}

	// Other tests' daemons share the template directory: count from here.
	templatesBefore := len(d.vmStatus(ctx).Templates)
	bigCfg := podConfig("big")
	bigCfg.Linux.Resources = &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 128 << 20}
	big := d.runPod(ctx, bigCfg)
	if b := d.podBoot(ctx, big); b == sandbox.BootPool {
		t.Fatalf("pod bigger than the warm VMs took one")
	}
	if st := d.waitPool(ctx); st.Pool.Hits != 1 || st.Pool.Misses != 1 {
		t.Fatalf("pool hits/misses %d/%d, want 1/1", st.Pool.Hits, st.Pool.Misses)
	}
	// The bigger pod asked for a template of its size: let that build end.
	for len(d.vmStatus(ctx).Templates) <= templatesBefore {
		if ctx.Err() != nil {
			t.Fatalf("no template for the bigger size: %+v", d.vmStatus(ctx))
		}
		time.Sleep(200 * time.Millisecond)
	}
	const podPIDs = 2
	if n := len(qemu.RunningPIDs(d.state)); n != podPIDs+1 {
		t.Fatalf("%d QEMUs, want %d pods + 1 warm VM", n, podPIDs)
	}
	oldTaps := warmTaps()
	if len(oldTaps) != 1 {
		t.Fatalf("warm taps in the host namespace: %v, want one", oldTaps)
	}

	d.stop(syscall.SIGKILL)
	d.start()
	d.waitPool(ctx)
	if n := len(qemu.RunningPIDs(d.state)); n != podPIDs+1 {
		t.Fatalf("%d QEMUs after restart, want %d pods + 1 warm VM", n, podPIDs)
	}
	if taps := warmTaps(); len(taps) != 1 || taps[0] == oldTaps[0] {
		t.Fatalf("warm taps after restart: %v (before: %v)", taps, oldTaps)
	}
	for _, p := range []string{web, big} {
		if _, err := d.rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p}); err != nil {
			t.Fatal(err)
		}
	}
	d.stop(syscall.SIGTERM)
	if left := qemu.RunningPIDs(d.state); len(left) != 0 {
		t.Fatalf("QEMUs left after a graceful stop: %v", left)
	}
	if taps := warmTaps(); len(taps) != 0 {
		t.Fatalf("warm taps left: %v", taps)
	}
}
