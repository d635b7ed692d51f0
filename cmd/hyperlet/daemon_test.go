package main

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// buildDaemon builds the hyperlet binary for this test.
func buildDaemon(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "hyperlet")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

type daemon struct {
	cmd                 *exec.Cmd
	socket, root, state string
	log                 *strings.Builder
}

func startDaemon(t *testing.T, bin, dir string) *daemon {
	t.Helper()
	return startDaemonWithConfig(t, bin, dir, filepath.Join(dir, "missing.toml"))
}

func startDaemonWithConfig(t *testing.T, bin, dir, config string) *daemon {
	t.Helper()
	d := &daemon{
		socket: filepath.Join(dir, "s", "hyperlet.sock"),
		root:   filepath.Join(dir, "root"),
		state:  filepath.Join(dir, "state"),
		log:    &strings.Builder{},
	}
	d.cmd = exec.Command(bin, "--config", config,
		"--socket", d.socket, "--root", d.root, "--state", d.state)
	d.cmd.Stderr = d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.cmd.Process.Kill(); d.cmd.Wait() })
	for i := 0; i < 200; i++ {
		// A killed daemon's socket file may linger: wait for an answer.
		if c, err := net.Dial("unix", d.socket); err == nil {
			c.Close()
			return d
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("daemon did not create %s; log:\n%s", d.socket, d.log)
	return nil
}

func criVersion(t *testing.T, socket string) *runtimeapi.VersionResponse {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := runtimeapi.NewRuntimeServiceClient(conn).Version(ctx, &runtimeapi.VersionRequest{})
	if err != nil {
		t.Fatalf("Version on %s: %v", socket, err)
	}
	return v
}

// TestDaemonContract: two instances with their own directories run side by
// side, a third on a used root is refused, SIGTERM exits cleanly and
// removes the socket, and nothing is written outside root, state and socket.
func TestDaemonContract(t *testing.T) {
	bin := buildDaemon(t)
	dir1, dir2 := t.TempDir(), t.TempDir()
	d1 := startDaemon(t, bin, dir1)
	d2 := startDaemon(t, bin, dir2)
	for _, d := range []*daemon{d1, d2} {
		if v := criVersion(t, d.socket); v.RuntimeName != "hyperlet" || v.RuntimeApiVersion != "v1" {
			t.Errorf("Version = %+v", v)
		}
	}

	same := exec.Command(bin, "--config", "/nonexistent", "--socket", filepath.Join(dir1, "other.sock"), "--root", d1.root, "--state", d1.state)
	out, err := same.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "in use by another hyperlet") {
		t.Errorf("second daemon on the same root: %v\n%s", err, out)
	}
	taken := exec.Command(bin, "--config", "/nonexistent", "--socket", d2.socket, "--root", filepath.Join(dir1, "r3"), "--state", filepath.Join(dir1, "s3"))
	out, err = taken.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "served by another process") {
		t.Errorf("second daemon on a live socket: %v\n%s", err, out)
	}

	d1.cmd.Process.Signal(syscall.SIGTERM)
	if err := d1.cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, d1.log)
	}
	if _, err := os.Stat(d1.socket); !os.IsNotExist(err) {
		t.Errorf("socket left after SIGTERM: %v", err)
	}
	criVersion(t, d2.socket) // the other instance is unaffected
	entries, _ := os.ReadDir(dir2)
	for _, e := range entries {
		switch e.Name() {
		case "s", "root", "state":
		default:
			t.Errorf("daemon wrote %s outside its directories", e.Name())
		}
	}
}
