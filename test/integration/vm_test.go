package integration

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/hyperlet/hyperlet/pkg/agent"
	"github.com/hyperlet/hyperlet/pkg/vm"
)

func TestEchoHello(t *testing.T) {
	v := bootVM(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	st, err := v.client.Run(ctx, &agent.ProcessSpec{Id: "echo", Args: []string{"echo", "hello"}}, nil, &out, &errb)
	if err != nil {
		t.Fatal(err)
	}
	if st.ExitCode != 0 || out.String() != "hello\n" || errb.Len() != 0 {
		t.Fatalf("echo hello: code %d, stdout %q, stderr %q", st.ExitCode, out.String(), errb.String())
	}
}

// TestAttachAfterRestart re-adopts a running VM from its directory, as a
// restarted daemon does, runs a command through a new agent connection and
// stops it with nothing left behind. A disk hot-added after the restart does
// not collide with one added before. A VM that is gone cannot be attached.
func TestAttachAfterRestart(t *testing.T) {
	v := bootVM(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	img := v.cfg.Dir + ".disk"
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(img) })
	if _, err := v.AddDisk(ctx, vm.Disk{ID: "before", Path: img, ReadOnly: true}); err != nil {
		t.Fatal(err)
	}
	v.client.Close() // the old daemon's connection dies with it

	v2, err := driver.Attach(ctx, v.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if v2.PID() != v.PID() {
		t.Fatalf("attached pid %d, want %d", v2.PID(), v.PID())
	}
	if addr, err := v2.AddDisk(ctx, vm.Disk{ID: "after", Path: img, ReadOnly: true}); err != nil || addr.Target != 1 {
		t.Fatalf("disk added after attach: %+v %v, want target 1", addr, err)
	}
	c, err := agent.Dial(ctx, v2.AgentSocket())
	if err != nil {
		t.Fatal(err)
	}
	v.client = c
	var out bytes.Buffer
	if st, err := c.Run(ctx, &agent.ProcessSpec{Id: "echo", Args: []string{"echo", "again"}}, nil, &out, nil); err != nil || st.ExitCode != 0 || out.String() != "again\n" {
		t.Fatalf("run after attach: %v %v %q", st, err, out.String())
	}
	if err := v2.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	<-v.Exited()
	assertGone(t, v)
	if _, err := driver.Attach(ctx, v.cfg); !errors.Is(err, vm.ErrNotRunning) {
		t.Fatalf("attach to a stopped VM: %v, want ErrNotRunning", err)
	}
}
