package main

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// switchedMarker exists in the tmpfs root the agent moves itself onto.
const switchedMarker = "/.hyperlet-root"

// switchRoot moves the initramfs onto a tmpfs mounted over it and re-executes
// the agent there. runc pivots into container rootfses, and pivot_root
// refuses to work while the root is the initial rootfs mount; it works from a
// tmpfs mounted on top, as after any initramfs's switch_root. The initramfs
// files are deleted as they are copied, so their memory is freed.
func switchRoot() error {
	if _, err := os.Lstat(switchedMarker); err == nil {
		return nil
	}
	const newRoot = "/newroot"
	if err := os.MkdirAll(newRoot, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", newRoot, "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs root: %w", err)
	}
	var rootDev uint64
	var st unix.Stat_t
	if err := unix.Lstat("/", &st); err != nil {
		return err
	}
	rootDev = st.Dev
	err := filepath.WalkDir("/", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if path == "/" {
			return nil
		}
		if path == newRoot {
			return filepath.SkipDir
		}
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			return err
		}
		if st.Dev != rootDev {
			return filepath.SkipDir
		}
		return copyEntry(path, filepath.Join(newRoot, path), &st)
	})
	if err != nil {
		return fmt.Errorf("copy initramfs: %w", err)
	}
	// Free the initramfs: remove what was copied (directories last).
	entries, _ := os.ReadDir("/")
	for _, e := range entries {
		if "/"+e.Name() != newRoot {
			os.RemoveAll("/" + e.Name())
		}
	}
	if err := os.WriteFile(filepath.Join(newRoot, switchedMarker), nil, 0o444); err != nil {
		return err
	}
	if err := unix.Chdir(newRoot); err != nil {
		return err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	return syscall.Exec("/init", os.Args, os.Environ())
}

func copyEntry(src, dst string, st *unix.Stat_t) error {
	mode := st.Mode & 0o7777
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		if err := os.Mkdir(dst, 0o700); err != nil && !os.IsExist(err) {
			return err
		}
	case unix.S_IFLNK:
		target, err := os.Readlink(src)
		if err != nil {
			return err
		}
		return os.Symlink(target, dst)
	case unix.S_IFREG:
		in, err := os.Open(src)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
		if err := out.Close(); err != nil {
			return err
		}
	default:
		if err := unix.Mknod(dst, st.Mode, int(st.Rdev)); err != nil {
			return err
		}
	}
	if err := os.Lchown(dst, int(st.Uid), int(st.Gid)); err != nil {
		return err
	}
	return unix.Chmod(dst, mode)
}
