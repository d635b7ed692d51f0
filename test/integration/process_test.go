package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
	"github.com/hyperlet/hyperlet/pkg/agent"
	"github.com/hyperlet/hyperlet/pkg/vm"
)

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestStream64MiB streams 64 MiB of random bytes out of the guest and
// compares checksums computed on both sides.
func TestStream64MiB(t *testing.T) {
	v := bootVM(t)
	ctx := testCtx(t, 5*time.Minute)
	h := sha256.New()
	var errb bytes.Buffer
	script := "head -c 67108864 /dev/urandom > /tmp/blob && sha256sum /tmp/blob >&2 && cat /tmp/blob && rm /tmp/blob"
	start := time.Now()
	st, err := v.client.Run(ctx, &agent.ProcessSpec{Id: "stream", Args: []string{"sh", "-c", script}}, nil, h, &errb)
	if err != nil {
		t.Fatal(err)
	}
	if st.ExitCode != 0 {
		t.Fatalf("exit %d: %s", st.ExitCode, errb.String())
	}
	guestSum, _, _ := strings.Cut(errb.String(), " ")
	if got := hex.EncodeToString(h.Sum(nil)); got != guestSum {
		t.Fatalf("stdout sha256 %s, guest says %s", got, guestSum)
	}
	t.Logf("64 MiB in %v", time.Since(start).Round(time.Millisecond))
}

// TestStdinRoundTrip sends 3 MiB through cat and back.
func TestStdinRoundTrip(t *testing.T) {
	v := bootVM(t)
	ctx := testCtx(t, 2*time.Minute)
	in := bytes.Repeat([]byte("0123456789abcdef"), 3<<16)
	var out bytes.Buffer
	st, err := v.client.Run(ctx, &agent.ProcessSpec{Id: "cat", Args: []string{"cat"}}, bytes.NewReader(in), &out, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.ExitCode != 0 || !bytes.Equal(out.Bytes(), in) {
		t.Fatalf("cat: exit %d, %d bytes back of %d", st.ExitCode, out.Len(), len(in))
	}
}

// watchBuffer collects output and lets a test wait for a substring.
type watchBuffer struct{ lockedBuffer }

func (w *watchBuffer) waitFor(t *testing.T, s string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if strings.Contains(w.String(), s) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("output never contained %q; got %q", s, w.String())
}

// TestTTYInteractive drives a shell on a terminal: input echo, a resize seen
// by stty, and the exit status.
func TestTTYInteractive(t *testing.T) {
	v := bootVM(t)
	ctx := testCtx(t, 2*time.Minute)
	p, err := v.client.Start(ctx, &agent.ProcessSpec{Id: "sh", Args: []string{"sh"}, Tty: true, Stdin: true, Rows: 24, Cols: 80, Env: []string{"TERM=dumb", "PS1=$ "}})
	if err != nil {
		t.Fatal(err)
	}
	var out watchBuffer
	done := make(chan error, 1)
	go func() { _, err := p.CopyOutput(ctx, agentapi.Stream_STDOUT, 0, &out); done <- err }()
	stdinR, stdinW := ioPipe()
	go p.CopyStdin(ctx, stdinR)

	fmt.Fprintf(stdinW, "echo $((6*7))x\n")
	out.waitFor(t, "42x")
	fmt.Fprintf(stdinW, "stty size\n")
	out.waitFor(t, "24 80")
	if err := p.Resize(ctx, 33, 111); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(stdinW, "stty size\n")
	out.waitFor(t, "33 111")
	fmt.Fprintf(stdinW, "exit 3\n")
	st, err := p.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.ExitCode != 3 {
		t.Fatalf("exit code %d, want 3", st.ExitCode)
	}
	if err := <-done; err != nil {
		t.Fatalf("copy output: %v", err)
	}
	stdinW.Close()
}

func TestSigkillIs137(t *testing.T) {
	v := bootVM(t)
	ctx := testCtx(t, time.Minute)
	p, err := v.client.Start(ctx, &agent.ProcessSpec{Id: "sleep", Args: []string{"sleep", "1000"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Signal(ctx, uint32(syscall.SIGKILL)); err != nil {
		t.Fatal(err)
	}
	st, err := p.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.ExitCode != 137 || st.Signal != 9 {
		t.Fatalf("status %d signal %d, want 137 and 9", st.ExitCode, st.Signal)
	}
	// Signalling an exited process is not an error; an unknown one is.
	if err := p.Signal(ctx, 15); err != nil {
		t.Errorf("signal exited process: %v", err)
	}
	if err := v.client.Process("nope").Signal(ctx, 15); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("signal unknown process: %v, want not found", err)
	}
	if _, err := v.client.Start(ctx, &agent.ProcessSpec{Id: "x", Args: []string{"/no/such/binary"}}); err == nil {
		t.Error("starting a missing binary succeeded")
	}
}

// TestKillQEMU kills the VM under a running process: the wait fails with a
// clear error and nothing of the VM remains.
func TestKillQEMU(t *testing.T) {
	v := bootVM(t)
	ctx := testCtx(t, time.Minute)
	p, err := v.client.Start(ctx, &agent.ProcessSpec{Id: "sleep", Args: []string{"sleep", "1000"}})
	if err != nil {
		t.Fatal(err)
	}
	waitErr := make(chan error, 1)
	go func() { _, err := p.Wait(ctx); waitErr <- err }()
	pid := v.PID()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err = <-waitErr
	if !errors.Is(err, agent.ErrUnavailable) {
		t.Fatalf("wait after QEMU was killed: %v, want ErrUnavailable", err)
	}
	t.Logf("wait error: %v", err)
	var ee *vm.ExitError
	if err := v.Wait(ctx); !errors.As(err, &ee) || !strings.Contains(ee.Reason, "signal 9") {
		t.Fatalf("vm wait: %v, want ExitError killed by signal 9", err)
	}
	assertGone(t, v)
	if _, err := v.client.Version(ctx); !errors.Is(err, agent.ErrUnavailable) {
		t.Fatalf("version on dead VM: %v", err)
	}
}

// assertGone checks that a VM's process and files are gone.
func assertGone(t *testing.T, v *testVM) {
	t.Helper()
	if _, err := os.Stat(v.cfg.Dir); !os.IsNotExist(err) {
		entries, _ := os.ReadDir(v.cfg.Dir)
		t.Errorf("vm dir %s still exists (%v): %v", v.cfg.Dir, err, entries)
	}
	if err := syscall.Kill(v.PID(), 0); err == nil {
		t.Errorf("qemu pid %d still alive", v.PID())
	}
}

// TestReconnect drops the host's connection while a process writes and
// dials again, as a restarted daemon would: no output is lost or repeated.
func TestReconnect(t *testing.T) {
	v := bootVM(t)
	ctx := testCtx(t, 3*time.Minute)
	p, err := v.client.Start(ctx, &agent.ProcessSpec{Id: "seq", Args: []string{"seq", "1", "200000"}})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	// Read a little, then drop the connection several times mid-stream.
	var off uint64
	for i := 0; i < 5; i++ {
		rctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		off, _ = p.CopyOutput(rctx, agentapi.Stream_STDOUT, off, &out)
		cancel()
		if err := v.client.Reconnect(ctx); err != nil {
			t.Fatalf("reconnect %d: %v", i, err)
		}
	}
	// A new client, as after a daemon restart.
	v.client.Close()
	c2, err := agent.Dial(ctx, v.AgentSocket())
	if err != nil {
		t.Fatal(err)
	}
	v.client = c2
	p = c2.Process("seq")
	if _, err := p.CopyOutput(ctx, agentapi.Stream_STDOUT, off, &out); err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	for i := 1; i <= 200000; i++ {
		fmt.Fprintf(&want, "%d\n", i)
	}
	if !bytes.Equal(out.Bytes(), want.Bytes()) {
		t.Fatalf("output after reconnects: %d bytes, want %d", out.Len(), want.Len())
	}
	if st, err := p.Wait(ctx); err != nil || st.ExitCode != 0 {
		t.Fatalf("wait: %v %v", st, err)
	}
}

// TestHotAddDisk attaches a file as a disk after boot and reads it in the guest.
func TestHotAddDisk(t *testing.T) {
	v := bootVM(t)
	ctx := testCtx(t, time.Minute)
	img := v.cfg.Dir + ".disk"
	data := bytes.Repeat([]byte("hyperlet-disk-test!"), 1<<16)
	if err := os.WriteFile(img, data[:1<<20], 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(img) })
	addr, err := v.AddDisk(ctx, vm.Disk{ID: "d1", Path: img, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf(`for i in $(seq 100); do for d in /sys/bus/scsi/devices/*:0:%d:%d/block/*; do [ -e "$d" ] && { head -c 19 /dev/${d##*/}; exit 0; }; done; sleep 0.1; done; exit 1`, addr.Target, addr.LUN)
	var out, errb bytes.Buffer
	st, err := v.client.Run(ctx, &agent.ProcessSpec{Id: "read", Args: []string{"sh", "-c", script}}, nil, &out, &errb)
	if err != nil {
		t.Fatal(err)
	}
	if st.ExitCode != 0 || out.String() != "hyperlet-disk-test!" {
		t.Fatalf("read disk: exit %d, out %q, err %q", st.ExitCode, out.String(), errb.String())
	}
}

// TestParallelVMs boots ten VMs at once and runs a command in each.
func TestParallelVMs(t *testing.T) {
	requireVM(t)
	accel := resolveAccel(t)
	dir := runDir(t)
	const n = 10
	var wg sync.WaitGroup
	errs := make([]error, n)
	vms := make([]vm.VM, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			cfg := baseConfig(dir)
			cfg.Accel = accel
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			v, c, err := bootAndRun(ctx, cfg, i)
			vms[i], errs[i] = v, err
			if c != nil {
				c.Close()
			}
		}(i)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("vm %d: %v", i, err)
		}
	}
	for _, v := range vms {
		if v == nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := v.Stop(ctx); err != nil {
			t.Errorf("stop %s: %v", v.ID(), err)
		}
		cancel()
		if err := syscall.Kill(v.PID(), 0); err == nil {
			t.Errorf("qemu %d alive after stop", v.PID())
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != n { // only the console logs remain
		t.Errorf("run dir holds %d entries after stop, want %d console logs", len(entries), n)
	}
}

func ioPipe() (*os.File, *os.File) {
	r, w, err := os.Pipe()
	if err != nil {
		panic(err)
	}
	return r, w
}

// TestClockAndShutdown: the guest runs on the host's clock, and an agent
// Shutdown ends QEMU cleanly with nothing left behind.
func TestClockAndShutdown(t *testing.T) {
	v := bootVM(t)
	ctx := testCtx(t, time.Minute)
	var out bytes.Buffer
	st, err := v.client.Run(ctx, &agent.ProcessSpec{Id: "date", Args: []string{"date", "+%s"}}, nil, &out, nil)
	if err != nil {
		t.Fatal(err)
	}
	var guest int64
	fmt.Sscan(out.String(), &guest)
	if d := time.Since(time.Unix(guest, 0)); d < -time.Minute || d > time.Minute {
		t.Errorf("guest clock %d is %v off the host's", guest, d)
	}
	if at := time.Unix(0, st.ExitedAtUnixNano); time.Since(at) > time.Minute || time.Since(at) < 0 {
		t.Errorf("exit time %v is not now", at)
	}
	if err := v.client.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := v.Wait(ctx); err != nil {
		t.Fatalf("vm after shutdown: %v, want a clean exit", err)
	}
	assertGone(t, v)
}
