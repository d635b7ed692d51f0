package sandbox

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
)

// TestShareMounts bind-mounts real host paths (the test runs as root, as
// hyperlet does) and checks that removal unmounts them without touching the
// host files.
func TestShareMounts(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("this test needs root (bind mounts), as hyperlet itself does")
	}
	host := t.TempDir()
	shared := filepath.Join(t.TempDir(), "shared")
	if err := makeShared(shared); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(host, "dir")
	os.Mkdir(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "keep"), []byte("precious"), 0o644)
	file := filepath.Join(host, "file")
	os.WriteFile(file, []byte("f"), 0o644)
	id := strings.Repeat("a", 64)

	specMounts, err := shareMounts(shared, "", id, []*runtime.Mount{
		{ContainerPath: "/d", HostPath: dir, Readonly: true},
		{ContainerPath: "/f", HostPath: file},
		{ContainerPath: "/n", HostPath: filepath.Join(host, "new")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(specMounts) != 3 || specMounts[0].Source != agentapi.SharedDir+"/aaaaaaaaaaaaaaaa-0" {
		t.Fatalf("spec mounts %+v", specMounts)
	}
	if b, _ := os.ReadFile(filepath.Join(shared, "aaaaaaaaaaaaaaaa-0", "keep")); string(b) != "precious" {
		t.Fatalf("bind of dir not visible: %q", b)
	}
	if err := os.WriteFile(filepath.Join(shared, "aaaaaaaaaaaaaaaa-0", "x"), nil, 0o644); err == nil {
		t.Error("read-only bind is writable")
	}
	if _, err := os.Stat(filepath.Join(host, "new")); err != nil {
		t.Errorf("missing source not created: %v", err)
	}

	// Bad input fails and leaves nothing mounted.
	_, err = shareMounts(shared, "", strings.Repeat("b", 64), []*runtime.Mount{
		{ContainerPath: "/ok", HostPath: dir}, {ContainerPath: "relative", HostPath: dir},
	})
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("relative container path: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(shared, "bbbbbbbbbbbbbbbb-0")); !os.IsNotExist(err) {
		t.Errorf("failed mount left its entry: %v", err)
	}

	if err := removeShared(shared); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(shared); !os.IsNotExist(err) {
		t.Errorf("shared dir left: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "keep")); string(b) != "precious" {
		t.Errorf("host file lost: %q", b)
	}
	if err := unshareMounts("", ""); err == nil {
		t.Error("unshareMounts accepted an empty directory")
	}
}
