package qemu

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestCappedCopy(t *testing.T) {
	for _, tc := range []struct {
		name          string
		have, in, cap int
		want          int
	}{
		{"under the cap", 0, 100, 1000, 100},
		{"over the cap", 0, 5000, 1000, 1000},
		{"appending to a full log", 1000, 10, 1000, 1000},
		{"appending up to the cap", 900, 500, 1000, 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "log")
			os.WriteFile(p, bytes.Repeat([]byte("o"), tc.have), 0o600)
			f, _ := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
			cappedCopy(f, bytes.NewReader(bytes.Repeat([]byte("x"), tc.in)), int64(tc.cap))
			f.Close()
			st, _ := os.Stat(p)
			if int(st.Size()) != tc.want {
				t.Fatalf("log is %d bytes, want %d", st.Size(), tc.want)
			}
		})
	}
}

func TestReachable(t *testing.T) {
	base := t.TempDir()
	os.Chmod(base, 0o711)
	os.Chmod(filepath.Dir(base), 0o711) // t.TempDir's own parent
	open := filepath.Join(base, "open")
	os.MkdirAll(filepath.Join(open, "vm"), 0o711)
	closed := filepath.Join(base, "closed")
	os.MkdirAll(filepath.Join(closed, "vm"), 0o700)
	os.Chmod(closed, 0o700)
	if err := reachable(filepath.Join(open, "vm")); err != nil {
		t.Errorf("searchable path refused: %v", err)
	}
	if err := reachable(filepath.Join(closed, "vm")); err == nil {
		t.Error("path below a 0700 directory accepted")
	}
	done := make(chan error, 1)
	go func() { done <- reachable("relative/vm") }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("reachable does not end on a relative path")
	}
}
