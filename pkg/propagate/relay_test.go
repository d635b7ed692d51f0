package propagate

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// TestRelay sets up what a pod has (a shared directory, a jail in a user
// and mount namespace of its own, a volume cloned idmapped into it as a
// slave of the host's mount), then mounts a root-only directory in the
// volume on the host: the jail's root cannot read it until relayed, and
// the relayed clone goes once the host unmounts and removes its mount point.
func TestRelay(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("TestRelay needs root (mount and user namespaces); run the tests as root")
	}
	tmp := t.TempDir()
	// The jail's root must get to the shared directory.
	os.Chmod(filepath.Dir(tmp), 0o755)
	os.Chmod(tmp, 0o755)
	src := filepath.Join(tmp, "volume")
	point := filepath.Join(src, "mnt")
	flags := filepath.Join(tmp, "flags")
	shared := filepath.Join(tmp, "shared")
	for _, d := range []string{point, flags, shared} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(shared, 0o755)
	os.Chmod(src, 0o755)
	if err := os.WriteFile(filepath.Join(flags, "flagFile"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	mount := func(src, dst string, flags uintptr) {
		t.Helper()
		if err := unix.Mount(src, dst, "", flags, ""); err != nil {
			t.Fatalf("mount %s on %s: %v", src, dst, err)
		}
	}
	mount(src, src, unix.MS_BIND|unix.MS_REC)
	t.Cleanup(func() { unix.Unmount(src, unix.MNT_DETACH) })
	mount("", src, unix.MS_SHARED|unix.MS_REC)
	mount(shared, shared, unix.MS_BIND)
	t.Cleanup(func() { unix.Unmount(shared, unix.MNT_DETACH) })
	mount("", shared, unix.MS_SHARED)

	jail := exec.Command("sleep", "600")
	jail.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 200000, Size: 65536}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 200000, Size: 65536}},
	}
	if err := jail.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { jail.Process.Kill(); jail.Wait() })
	pid := jail.Process.Pid

	// The volume, as the sandbox attaches it (pkg/sandbox mountVolume).
	userns, err := unix.Open(fmt.Sprintf("/proc/%d/ns/user", pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(userns)
	tree, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(tree)
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP, Userns_fd: uint64(userns)}); err != nil {
		t.Fatal(err)
	}
	entry := filepath.Join(shared, "c-0")
	os.Mkdir(entry, 0o755)
	target, err := unix.Open(entry, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(target)
	if err := unix.MoveMount(tree, "", target, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(entry, unix.MNT_DETACH) })
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &unix.MountAttr{Propagation: unix.MS_SLAVE}); err != nil {
		t.Fatal(err)
	}

	r, err := Start(pid, shared)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	// What the jail's root (host uid 200000) sees at the mount point.
	inJail := filepath.Join(entry, "mnt")
	ls := func() (string, error) {
		out, err := exec.Command("nsenter", "-t", fmt.Sprint(pid), "-U", "-m", "ls", "-A", inJail).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	if out, err := ls(); err != nil || out != "" {
		t.Fatalf("empty mount point in the jail: %q %v", out, err)
	}

	// Without the relay the kernel's copy is not idmapped: root's 0700
	// directory is closed to the jail.
	r.turn <- struct{}{}
	mount(flags, point, unix.MS_BIND)
	out, err := ls()
	<-r.turn
	if err == nil || !strings.Contains(out, "Permission denied") {
		t.Fatalf("the jail read an unrelayed root-only mount: %q %v", out, err)
	}
	if err := r.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if out, err := ls(); err != nil || out != "flagFile" {
		t.Fatalf("relayed mount in the jail: %q %v; want flagFile", out, err)
	}
	// Only the jail has the clone: the host's mount table under the
	// shared directory is what the kernel propagated.
	host, _ := mountinfo.GetMounts(mountinfo.PrefixFilter(shared))
	for _, m := range host {
		if m.Mountpoint == inJail && idmapped(m) {
			t.Errorf("relayed clone in the host's mount namespace: %+v", m)
		}
	}

	// The clone's flags are locked as the kernel locks every mount that
	// reaches a less privileged namespace: a host mount made read-only
	// cannot be made writable from the jail.
	if err := unix.Mount("tmpfs", point, "tmpfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, "mode=0700"); err != nil {
		t.Fatal(err)
	}
	if err := r.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if out, err := ls(); err != nil || out != "" {
		t.Fatalf("read-only tmpfs in the jail: %q %v", out, err)
	}
	if out, err := exec.Command("nsenter", "-t", fmt.Sprint(pid), "-U", "-m", "mount", "-o", "remount,bind,rw", inJail).CombinedOutput(); err == nil {
		t.Errorf("the jail made a read-only host mount writable: %s", out)
	}
	if out, err := exec.Command("nsenter", "-t", fmt.Sprint(pid), "-U", "-m", "touch", filepath.Join(inJail, "x")).CombinedOutput(); err == nil {
		t.Errorf("the jail wrote in a read-only host mount: %s", out)
	}
	if err := unix.Unmount(point, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	if err := r.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if out, err := ls(); err != nil || out != "flagFile" {
		t.Fatalf("the host's mount under the read-only one: %q %v", out, err)
	}

	// The host unmounts but keeps the directory: the clone goes.
	if err := unix.Unmount(point, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	if err := r.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if out, err := ls(); err != nil || out != "" {
		t.Fatalf("after the host's unmount the jail sees %q %v; want the empty directory", out, err)
	}
	if left := jailMounts(t, pid, inJail); len(left) != 0 {
		t.Errorf("mounts left in the jail after the host's unmount: %+v", left[0])
	}

	// A host mount with a submount, made again: one clone carries both.
	sub := filepath.Join(flags, "sub")
	os.Mkdir(sub, 0o700)
	mount(flags, point, unix.MS_BIND)
	mount(flags, filepath.Join(point, "sub"), unix.MS_BIND)
	if err := r.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("nsenter", "-t", fmt.Sprint(pid), "-U", "-m", "ls", "-A", filepath.Join(inJail, "sub")).CombinedOutput(); err != nil || !strings.Contains(string(out), "flagFile") {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
		t.Errorf("submount of a relayed mount in the jail: %q %v\n%s", out, err, b)
	}
	if err := r.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.turn <- struct{}{}
	failed := len(r.failed)
	<-r.turn
	if failed != 0 {
		t.Errorf("%d ops failed on a second sync", failed)
	}
	unix.Unmount(filepath.Join(point, "sub"), unix.MNT_DETACH)

	// The host unmounts and removes its mount point (critest's cleanup):
	// nothing pins it, and the clone goes.
	if err := unix.Unmount(point, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(point); err != nil {
		t.Errorf("remove the host's mount point while relayed: %v", err)
	}
	if err := r.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if left := jailMounts(t, pid, inJail); len(left) != 0 {
		t.Errorf("mounts left in the jail after the host's unmount: %+v", left[0])
	}
	if out, err := ls(); err == nil && strings.Contains(out, "flagFile") {
		t.Errorf("the jail still sees the unmounted directory: %q", out)
	}

	// The watch relays without being asked.
	os.Mkdir(point, 0o700)
	mount(flags, point, unix.MS_BIND)
	defer unix.Unmount(point, unix.MNT_DETACH)
	var last string
	for i := 0; i < 100; i++ {
		if last, err = ls(); err == nil && strings.HasPrefix(last, "flagFile") {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("the watch did not relay a new host mount: %q %v", last, err)
}

func jailMounts(t *testing.T, pid int, under string) []*mountinfo.Info {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ms, err := mountinfo.GetMountsFromReader(f, mountinfo.PrefixFilter(under))
	if err != nil {
		t.Fatal(err)
	}
	return ms
}
