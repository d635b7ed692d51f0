package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// buildHyperctl builds the CLI for a test.
func buildHyperctl(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "hyperctl")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/hyperctl").CombinedOutput(); err != nil {
		t.Fatalf("go build hyperctl: %v\n%s", err, out)
	}
	return bin
}

// TestHyperctl drives a running hyperlet with hyperctl: run detached,
// ps, exec, stats of a busy container, pods, version, info, inspect, kill,
// rm, pause and unpause (across a daemon SIGKILL), cp both ways.
func TestHyperctl(t *testing.T) {
	d := startCRI(t)
	bin := buildHyperctl(t)
	ctl := func(args ...string) (string, error) {
		cmd := exec.Command(bin, append([]string{"--endpoint=" + d.socket}, args...)...)
		cmd.Env = append(os.Environ(), "HYPERCTL_ADMIN_SOCKET="+filepath.Join(d.state, "admin.sock"))
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	must := func(args ...string) string {
		t.Helper()
		out, err := ctl(args...)
		if err != nil {
			t.Fatalf("hyperctl %v: %v\n%s", args, err, out)
		}
		return out
	}
	must("run", "-d", "--name=spin", testImage, "sh", "-c", "while :; do :; done")
	if out := must("ps", "--format", "json"); !strings.Contains(out, `"spin"`) {
		t.Errorf("ps --format json lacks the container:\n%s", out)
	}
	if out := must("exec", "spin", "sh", "-c", "echo $((6*7))"); out != "42\n" {
		t.Errorf("exec: %q", out)
	}
	out := must("stats", "--no-stream", "spin")
	m := regexp.MustCompile(`spin\s+([0-9.]+)%`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("stats output:\n%s", out)
	}
	if cpu, _ := strconv.ParseFloat(m[1], 64); cpu < 20 {
		t.Errorf("a spinning container uses %.1f%% of a CPU per stats:\n%s", cpu, out)
	}
	if out := must("pods"); !strings.Contains(out, "hyperctl/spin") || !strings.Contains(out, "READY") {
		t.Errorf("pods:\n%s", out)
	}
	if out := must("version"); !strings.Contains(out, "hyperlet") {
		t.Errorf("version:\n%s", out)
	}
	if out := must("info"); !strings.Contains(out, "RuntimeReady") {
		t.Errorf("info:\n%s", out)
	}
	if out, err := ctl("logs"); err == nil {
		t.Errorf("logs without a container succeeded:\n%s", out)
	}
	if out := must("run", "--help"); !strings.Contains(out, "--publish") {
		t.Errorf("run --help:\n%s", out)
	}
	must("kill", "spin")
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(must("ps", "-a"), "EXITED") {
		if time.Now().After(deadline) {
			t.Fatalf("killed container not exited:\n%s", must("ps", "-a"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	must("rm", "-f", "spin")
	if out := must("ps", "-a"); strings.Contains(out, "spin") {
		t.Errorf("removed container listed:\n%s", out)
	}

	testHyperctlPause(t, d, ctl, must)
	testHyperctlCp(t, must)
	must("rm", "-f", "count")
}

// testHyperctlPause checks that pause stops a counter loop, across a daemon
// SIGKILL and restart, and unpause starts it again.
func testHyperctlPause(t *testing.T, d *criDaemon, ctl func(...string) (string, error), must func(...string) string) {
	must("run", "-d", "--name=count", testImage, "sh", "-c", "i=0; while :; do i=$((i+1)); echo $i > /tmp/n.new; mv /tmp/n.new /tmp/n; sleep 0.1; done")
	count := func() int {
		t.Helper()
		// The loop replaces the file whole; it is missing only before the
		// first round.
		deadline := time.Now().Add(20 * time.Second)
		for {
			out, err := ctl("exec", "count", "cat", "/tmp/n")
			n, perr := strconv.Atoi(strings.TrimSpace(out))
			if err == nil && perr == nil {
				return n
			}
			if time.Now().After(deadline) {
				t.Fatalf("read the counter: %v, %v\n%s", err, perr, out)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	if out := must("inspect", "--format=table", "count"); !regexp.MustCompile(`State\s+RUNNING`).MatchString(out) {
		t.Errorf("inspect --format=table:\n%s", out)
	}
	n0 := count()
	time.Sleep(4 * time.Second)
	n1 := count()
	running := n1 - n0
	if running < 4 {
		t.Fatalf("the counter moved %d in 4 s running", running)
	}
	must("pause", "count")
	must("pause", "count") // paused twice is paused once
	if out, err := ctl("exec", "count", "cat", "/tmp/n"); err == nil || !strings.Contains(out, "paused") {
		t.Errorf("exec in a paused pod: %v\n%s", err, out)
	}
	if out, err := ctl("stop", "count"); err == nil || !strings.Contains(out, "paused") {
		t.Errorf("stop in a paused pod: %v\n%s", err, out)
	}
	if out := must("ps"); !strings.Contains(out, "count") {
		t.Errorf("ps while paused:\n%s", out)
	}
	if out := must("pods"); !regexp.MustCompile(`PAUSED\s+hyperctl/count`).MatchString(out) {
		t.Errorf("pods while paused:\n%s", out)
	}
	// The pod stays paused across a daemon SIGKILL and restart.
	d.stop(syscall.SIGKILL)
	d.start()
	time.Sleep(4 * time.Second)
	if out, err := ctl("exec", "count", "cat", "/tmp/n"); err == nil || !strings.Contains(out, "paused") {
		t.Errorf("exec in a paused pod after a restart: %v\n%s", err, out)
	}
	must("unpause", "count")
	n2 := count()
	t.Logf("counter: +%d in 4 s running, +%d in 4 s paused (and a daemon restart)", running, n2-n1)
	if n2-n1 > running/2 {
		t.Errorf("the counter moved %d while paused, %d in as long running", n2-n1, running)
	}
	time.Sleep(2 * time.Second)
	if n3 := count(); n3 <= n2 {
		t.Errorf("the counter did not move after unpause: %d then %d", n2, n3)
	}
	if out, err := ctl("pause", "no-such-pod"); err == nil {
		t.Errorf("pause of a missing pod succeeded:\n%s", out)
	}
}

// testHyperctlCp copies a tree into a container and one out of it.
func testHyperctlCp(t *testing.T, must func(...string) string) {
	local := t.TempDir()
	src := filepath.Join(local, "tree")
	os.MkdirAll(filepath.Join(src, "sub"), 0o755)
	os.WriteFile(filepath.Join(src, "a.txt"), []byte("hello"), 0o644)
	os.WriteFile(filepath.Join(src, "sub", "b.txt"), []byte("deep"), 0o600)
	must("cp", src, "count:/tmp/")
	if out := must("exec", "count", "cat", "/tmp/tree/a.txt", "/tmp/tree/sub/b.txt"); out != "hellodeep" {
		t.Errorf("copied in: %q", out)
	}
	must("cp", filepath.Join(src, "a.txt"), "count:/tmp/renamed.txt")
	if out := must("exec", "count", "cat", "/tmp/renamed.txt"); out != "hello" {
		t.Errorf("file copied in as a new name: %q", out)
	}
	must("exec", "count", "sh", "-c", "mkdir /tmp/out && echo world > /tmp/out/w && chmod 4755 /tmp/out/w && ln -s /etc/shadow /tmp/out/link")
	dst := filepath.Join(local, "got")
	must("cp", "count:/tmp/out", dst)
	if b, err := os.ReadFile(filepath.Join(dst, "w")); err != nil || string(b) != "world\n" {
		t.Errorf("copied out: %q, %v", b, err)
	}
	if fi, err := os.Stat(filepath.Join(dst, "w")); err != nil || fi.Mode()&os.ModeSetuid != 0 {
		t.Errorf("copied-out file mode %v (%v): set-id bits must not leave a container", fi.Mode(), err)
	}
	if l, err := os.Readlink(filepath.Join(dst, "link")); err != nil || l != "/etc/shadow" {
		t.Errorf("copied-out link = %q, %v; want the link itself, not followed", l, err)
	}
	must("cp", "count:/tmp/out/w", local) // into an existing directory
	if b, _ := os.ReadFile(filepath.Join(local, "w")); string(b) != "world\n" {
		t.Errorf("file copied out into a directory: %q", b)
	}
	// A paused pod can still be removed: stopping resumes it first.
	must("pause", "count")
}
