package jail

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// The helper runs before main in any binary that links this package (the
// daemon, tests, benchmarks), as moby's reexec does: the binary is
// re-executed as "hyperlet-jail" and must not do anything else.
func init() {
	if len(os.Args) != 2 || os.Args[0] != helperName {
		return
	}
	// Namespaces, the bounding set and no_new_privs are per thread: all of
	// it happens on this thread, which then execs.
	runtime.LockOSThread()
	var spec Spec
	if err := json.Unmarshal([]byte(os.Args[1]), &spec); err != nil {
		fail("spec", err)
	}
	if err := run(spec); err != nil {
		fail("", err)
	}
}

func fail(what string, err error) {
	if what != "" {
		err = fmt.Errorf("%s: %w", what, err)
	}
	fmt.Fprintf(os.Stderr, "hyperlet-jail: %v\n", err)
	os.Exit(127)
}

func run(spec Spec) error {
	// Wait until the daemon has put us in our cgroup.
	sync := os.NewFile(uintptr(spec.SyncFD), "sync")
	var b [1]byte
	if n, _ := sync.Read(b[:]); n != 1 {
		os.Exit(1)
	}
	sync.Close()

	// Nothing mounted here goes back to the host. (A mount namespace made
	// by a less privileged user namespace already receives the host's
	// shared mounts as slaves, so new volumes still reach the VM.)
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return fmt.Errorf("make / slave: %w", err)
	}
	root := spec.Root
	if err := unix.Mount("tmpfs", root, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755,size=64k,nr_inodes=256"); err != nil {
		return fmt.Errorf("mount jail root: %w", err)
	}
	for _, bd := range spec.Binds {
		if err := bind(root, bd); err != nil {
			return err
		}
	}
	for name, target := range spec.Symlinks {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.Symlink(target, p); err != nil {
			return err
		}
	}
	// A proc of the jail's own PID namespace: the VMM sees only itself.
	proc := filepath.Join(root, "proc")
	if err := os.Mkdir(proc, 0o555); err != nil {
		return err
	}
	if err := unix.Mount("proc", proc, "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "hidepid=2"); err != nil {
		return fmt.Errorf("mount proc: %w", err)
	}
	if err := unix.Mount("", root, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		return fmt.Errorf("make jail root read-only: %w", err)
	}
	if err := os.Chdir(root); err != nil {
		return err
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach old root: %w", err)
	}
	if err := os.Chdir("/"); err != nil {
		return err
	}

	if spec.NoFile > 0 {
		lim := unix.Rlimit{Cur: spec.NoFile, Max: spec.NoFile}
		var cur unix.Rlimit
		if unix.Getrlimit(unix.RLIMIT_NOFILE, &cur) == nil && cur.Max < lim.Max {
			lim = unix.Rlimit{Cur: min(lim.Cur, cur.Max), Max: cur.Max}
		}
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			return fmt.Errorf("RLIMIT_NOFILE: %w", err)
		}
	}
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{}); err != nil {
		return fmt.Errorf("RLIMIT_CORE: %w", err)
	}
	if err := dropPrivileges(); err != nil {
		return err
	}
	return syscall.Exec(spec.Args[0], spec.Args, []string{})
}

// bind makes bd.Source visible at bd.Target under root.
func bind(root string, bd Bind) error {
	st, err := os.Stat(bd.Source)
	if err != nil {
		return fmt.Errorf("bind source: %w", err)
	}
	target := filepath.Join(root, bd.Target)
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	if st.IsDir() {
		err = os.Mkdir(target, 0o755)
	} else {
		err = os.WriteFile(target, nil, 0o644)
	}
	if err != nil {
		return fmt.Errorf("bind target: %w", err)
	}
	flags := uintptr(unix.MS_BIND)
	if bd.Recursive {
		flags |= unix.MS_REC
	}
	if err := unix.Mount(bd.Source, target, "", flags, ""); err != nil {
		return fmt.Errorf("bind %s: %w", bd.Source, err)
	}
	if !bd.ReadOnly {
		return nil
	}
	// A remount in a user namespace must keep the flags the host's mount
	// has locked (nosuid, nodev, noexec, atime).
	var sfs unix.Statfs_t
	if err := unix.Statfs(target, &sfs); err != nil {
		return err
	}
	keep := uintptr(0)
	for _, f := range []struct{ st, ms uintptr }{
		{unix.ST_NOSUID, unix.MS_NOSUID}, {unix.ST_NODEV, unix.MS_NODEV}, {unix.ST_NOEXEC, unix.MS_NOEXEC},
		{unix.ST_NOATIME, unix.MS_NOATIME}, {unix.ST_NODIRATIME, unix.MS_NODIRATIME}, {unix.ST_RELATIME, unix.MS_RELATIME},
	} {
		if uintptr(sfs.Flags)&f.st != 0 {
			keep |= f.ms
		}
	}
	if err := unix.Mount("", target, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|keep, ""); err != nil {
		return fmt.Errorf("make %s read-only: %w", bd.Target, err)
	}
	return nil
}

// dropPrivileges leaves the process with no capabilities it could get back:
// securebits that make uid 0 special no more (locked), an empty bounding and
// ambient set, empty capability sets, and no_new_privs.
func dropPrivileges() error {
	const secure = 1<<0 | 1<<1 | 1<<2 | 1<<3 | 1<<4 | 1<<5 // NOROOT, NO_SETUID_FIXUP, KEEP_CAPS locked
	if err := unix.Prctl(unix.PR_SET_SECUREBITS, secure&^(1<<4), 0, 0, 0); err != nil {
		return fmt.Errorf("securebits: %w", err)
	}
	for c := 0; c <= 63; c++ {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && err != unix.EINVAL {
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	return nil
}
