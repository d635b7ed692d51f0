package main

import (
	"strings"
	"testing"
	"time"

	"github.com/hyperlet/hyperlet/pkg/imageservice"
)

func TestSameImage(t *testing.T) {
	for _, tc := range []struct {
		normalised, typed string
		want              bool
	}{
		{"docker.io/library/busybox:latest", "busybox", true},
		{"docker.io/library/busybox:latest", "busybox:latest", true},
		{"docker.io/library/busybox:1", "busybox", false},
		{"registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10", true},
		{"docker.io/library/notbusybox:latest", "busybox", false},
		{"quay.io/x/busybox:latest", "busybox", false},
		{"docker.io/library/busybox:latest", "docker.io/library/busybox", true},
		{"localhost:5000/app:latest", "localhost:5000/app", true},
		{"docker.io/library/busybox@sha256:" + strings.Repeat("a", 64), "busybox@sha256:" + strings.Repeat("a", 64), true},
	} {
		if got := sameImage(tc.normalised, tc.typed); got != tc.want {
			t.Errorf("sameImage(%q, %q) = %v", tc.normalised, tc.typed, got)
		}
	}
}

func TestProgressLine(t *testing.T) {
	start := time.Now().Add(-3 * time.Second)
	if got := progressLine(imageservice.PullProgress{Started: start}); !strings.HasPrefix(got, "resolving") {
		t.Errorf("before the manifest: %q", got)
	}
	got := progressLine(imageservice.PullProgress{Started: start, Layers: 3, LayersDone: 1, Bytes: 30 << 20, BytesDone: 12 << 19})
	if !strings.HasPrefix(got, "6.0/30.0 MiB, 1/3 layers (3s)") {
		t.Errorf("halfway: %q", got)
	}
}
