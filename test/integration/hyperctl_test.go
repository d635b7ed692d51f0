package integration

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
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
// ps, exec, stats of a busy container, pods, version, info, kill, rm.
func TestHyperctl(t *testing.T) {
	d := startCRI(t)
	bin := buildHyperctl(t)
	ctl := func(args ...string) (string, error) {
		out, err := exec.Command(bin, append([]string{"--endpoint=" + d.socket}, args...)...).CombinedOutput()
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
}
