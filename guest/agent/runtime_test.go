package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"
)

// The sealed copy is what crun and runc accept as their own clone: the same
// bytes, exactly runtimeSeals, no writes, and runnable through its
// descriptor's path.
func TestSealedCopy(t *testing.T) {
	bin, err := exec.LookPath("true")
	if err != nil {
		t.Fatal(err)
	}
	f, err := sealedCopy(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
	if err != nil {
		t.Fatal(err)
	}
	if seals != runtimeSeals {
		t.Errorf("seals %#x, want %#x", seals, runtimeSeals)
	}
	want, _ := os.ReadFile(bin)
	got, err := io.ReadAll(io.NewSectionReader(f, 0, int64(len(want))+1))
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("copy differs from %s (%d bytes, want %d; %v)", bin, len(got), len(want), err)
	}
	if _, err := f.WriteAt([]byte("x"), 0); err == nil {
		t.Error("a write to the sealed copy succeeded")
	}
	flags, err := unix.FcntlInt(f.Fd(), unix.F_GETFD, 0)
	if err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Errorf("descriptor flags %#x (%v): a child would inherit it", flags, err)
	}
	cmd := exec.Command(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("run the copy: %v: %s", err, out)
	}
	if _, err := sealedCopy("/nonexistent/runtime"); err == nil {
		t.Error("a copy of a missing file succeeded")
	}
}
