package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
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

	groups, err := shareMounts(shared, "", id, []*runtime.Mount{
		{ContainerPath: "/d", HostPath: dir, Readonly: true},
		{ContainerPath: "/f", HostPath: file},
		{ContainerPath: "/n", HostPath: filepath.Join(host, "new")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(groups) != 3 || len(groups[0]) != 1 || groups[0][0].Source != agentapi.SharedDir+"/aaaaaaaaaaaaaaaa-0" {
		t.Fatalf("spec mounts %+v", groups)
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

// TestShareMountsRace: an attacker that can write the share (root here,
// which the guest is not) keeps replacing new entries with symlinks to a
// canary directory while volumes are mounted 200 times. Mount points are
// opened by fd without following symlinks, so the canary is never mounted
// over and every mount is where it should be.
func TestShareMountsRace(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("this test needs root (mounts), as hyperlet itself does")
	}
	base := t.TempDir()
	canary := filepath.Join(base, "canary")
	os.Mkdir(canary, 0o755)
	src := filepath.Join(base, "src")
	os.Mkdir(src, 0o755)
	os.WriteFile(filepath.Join(src, "payload"), []byte("volume"), 0o644)
	shared := filepath.Join(base, "shared")
	if err := makeShared(shared); err != nil {
		t.Fatal(err)
	}
	defer removeShared(shared)

	stop := make(chan struct{})
	done := make(chan struct{})
	var swaps int
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			ents, _ := os.ReadDir(shared)
			for _, e := range ents {
				p := filepath.Join(shared, e.Name())
				if os.Remove(p) == nil && os.Symlink(canary, p) == nil {
					swaps++
				}
			}
		}
	}()
	var mounted int
	for i := 0; i < 200; i++ {
		id := fmt.Sprintf("%064x", i)
		_, err := shareMounts(shared, "", id, []*runtime.Mount{{ContainerPath: "/v", HostPath: src}})
		if err == nil {
			mounted++
			b, err := os.ReadFile(filepath.Join(shared, id[:16]+"-0", "payload"))
			if err != nil || string(b) != "volume" {
				t.Errorf("mount %d not at its entry: %q %v", i, b, err)
			}
		}
		unshareMounts(shared, id[:16]+"-")
		if ents, _ := os.ReadDir(canary); len(ents) != 0 {
			t.Fatalf("iteration %d: the canary was mounted over: %v", i, ents)
		}
	}
	close(stop)
	<-done
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), " "+canary+" ") {
		t.Errorf("canary is a mount point:\n%s", mi)
	}
	t.Logf("%d of 200 mounts made, %d entries swapped for symlinks", mounted, swaps)
	if swaps == 0 {
		t.Error("the attacker never got to swap an entry: the test raced nothing")
	}
}

func TestVolumesOf(t *testing.T) {
	vols := []*runtime.Mount{
		{ContainerPath: "/data", HostPath: "/srv/data", Readonly: true, RecursiveReadOnly: true},
		{ContainerPath: "/etc/hosts", HostPath: "/var/lib/kubelet/hosts"},
	}
	defaults := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc"},
		{Destination: "/dev/shm", Type: "bind", Source: "/run/hyperlet/pod/shm", Options: []string{"rbind"}},
	}
	spec := append(append([]specs.Mount{}, defaults...), hostBinds(vols)...)
	guest := guestSourced(spec, vols)
	// A plugin removed /etc/hosts, added a host bind and a tmpfs.
	spec = append(spec[:3],
		specs.Mount{Destination: "/extra", Type: "bind", Source: "/srv/extra", Options: []string{"rbind", "ro"}},
		specs.Mount{Destination: "/scratch", Type: "tmpfs", Source: "tmpfs"})
	got, at := volumesOf(spec, vols, guest)
	if len(got) != 2 || !slices.Equal(at, []int{2, 3}) {
		t.Fatalf("volumes %v at %v", got, at)
	}
	if got[0] != vols[0] {
		t.Errorf("a kept CRI volume lost its fields: %v", got[0])
	}
	if got[1].HostPath != "/srv/extra" || got[1].ContainerPath != "/extra" || !got[1].Readonly || got[1].Propagation != runtime.MountPropagation_PROPAGATION_PRIVATE {
		t.Errorf("a plugin's bind: %v", got[1])
	}
}

// A private volume's submount gets its own entry: read-only with the
// volume only under recursive read-only, and never pinning the host's
// mount point, which the host can unmount and remove while the pod lives.
func TestShareMountsSubmounts(t *testing.T) {
	for _, rro := range []bool{false, true} {
		t.Run(fmt.Sprintf("recursive=%v", rro), func(t *testing.T) {
			shared := filepath.Join(t.TempDir(), "shared")
			if err := makeShared(shared); err != nil {
				t.Fatalf("this test needs root (mounts): %v", err)
			}
			defer removeShared(shared)
			host := t.TempDir()
			sub := filepath.Join(host, "tmpfs")
			os.Mkdir(sub, 0o755)
			if err := unix.Mount("t", sub, "tmpfs", 0, ""); err != nil {
				t.Fatal(err)
			}
			defer unix.Unmount(sub, unix.MNT_DETACH)
			id := strings.Repeat("c", 64)
			groups, err := shareMounts(shared, "", id, []*runtime.Mount{{ContainerPath: "/v", HostPath: host, Readonly: true, RecursiveReadOnly: rro}})
			if err != nil {
				t.Fatal(err)
			}
			if len(groups) != 1 || len(groups[0]) != 2 || groups[0][1].Destination != "/v/tmpfs" || groups[0][1].Source != agentapi.SharedDir+"/cccccccccccccccc-0.0" {
				t.Fatalf("spec mounts %+v", groups)
			}
			if err := os.WriteFile(filepath.Join(shared, "cccccccccccccccc-0", "x"), nil, 0o644); err == nil {
				t.Error("the read-only volume is writable")
			}
			err = os.WriteFile(filepath.Join(shared, "cccccccccccccccc-0.0", "x"), nil, 0o644)
			if rro != (err != nil) {
				t.Errorf("write to the submount: %v, recursive read-only %v", err, rro)
			}
			if err := unix.Unmount(sub, 0); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(sub); err != nil {
				t.Errorf("the host cannot remove its submount's mount point while shared: %v", err)
			}
			if err := unshareMounts(shared, id[:16]+"-"); err != nil {
				t.Error(err)
			}
		})
	}
}
