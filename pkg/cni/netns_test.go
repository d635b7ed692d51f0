package cni

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

func TestOnThreadRestoresNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root (network namespaces); the test suite runs as root")
	}
	before, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()
	boom := errors.New("boom")
	for _, tc := range []struct {
		name string
		fn   func() error
		want error
	}{
		{"enters a new namespace", func() error { return unix.Unshare(unix.CLONE_NEWNET) }, nil},
		{"fails inside a new namespace", func() error { unix.Unshare(unix.CLONE_NEWNET); return boom }, boom},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for range 20 { // more calls than threads, so threads are reused
				if err := onThread(tc.fn); !errors.Is(err, tc.want) {
					t.Fatalf("onThread = %v, want %v", err, tc.want)
				}
				now, err := netns.Get()
				if err != nil {
					t.Fatal(err)
				}
				if !now.Equal(before) {
					t.Fatalf("caller moved to netns %v, was %v", now, before)
				}
				now.Close()
			}
		})
	}
}

func TestNewNetNS(t *testing.T) {
	name := "hyperlet-test-" + filepath.Base(t.TempDir())
	path, err := NewNetNS(name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatal(err)
	}
	if err := DeleteNetNS(name); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("netns %s still there: %v", path, err)
	}
	if err := DeleteNetNS(name); err != nil {
		t.Fatalf("second delete: %v", err)
	}
}
