package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/moby/sys/mountinfo"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"k8s.io/klog/v2"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
)

// Volumes reach the guest through one shared directory per pod, exported
// over virtio-9p by the pod's jailed QEMU. The directory is root's (mode
// 0755): the guest can read it but never create, rename or swap an entry in
// it, so a mount point the host makes there cannot be raced. Each CRI mount
// is cloned from its host path as a detached mount tree (open_tree), idmapped
// to the VM's user namespace, so that the unprivileged QEMU sees the files'
// real owners, and attached by fd (move_mount) on an entry "<container>-<n>"
// opened without following symlinks. Mounts made in the directory after the
// VM started reach its jail by propagation (the directory is a shared
// mount, the jail's copy a slave). The container's spec bind-mounts the
// guest's view of it.
//
// Readonly is enforced on the host mount (non-recursive, as CRI's readonly
// is); propagation flags apply to the host mount, as 9p carries no mount
// events into the guest; SELinux relabel requests are accepted and ignored
// (there is no SELinux in the guest).

// makeShared creates a pod's shared directory as a shared mount of its own.
func makeShared(shared string) (retErr error) {
	if err := os.MkdirAll(filepath.Dir(shared), 0o711); err != nil {
		return err
	}
	if err := os.Mkdir(shared, 0o755); err != nil {
		return fmt.Errorf("create shared directory: %w", err)
	}
	defer undo(&retErr, func() {
		unix.Unmount(shared, unix.MNT_DETACH)
		os.Remove(shared)
	})
	if err := unix.Mount(shared, shared, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind shared directory: %w", err)
	}
	if err := unix.Mount("", shared, "", unix.MS_SHARED, ""); err != nil {
		return fmt.Errorf("make shared directory a shared mount: %w", err)
	}
	return nil
}

// shareMounts mounts a container's volumes into the pod's shared directory
// and returns, for each, the spec mounts that use it (its submounts after
// it). userns is the VM's user namespace (/proc/PID/ns/user), "" for none.
func shareMounts(shared, userns, ctrID string, ms []*runtime.Mount) (_ [][]specs.Mount, retErr error) {
	if len(ms) == 0 {
		return nil, nil
	}
	if shared == "" {
		return nil, fmt.Errorf("%w: the pod has no shared directory", ErrUnsupported)
	}
	prefix := ctrID[:16] + "-"
	defer undo(&retErr, func() {
		unshareMounts(shared, prefix)
	})
	root, err := unix.Open(shared, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open shared directory: %w", err)
	}
	defer unix.Close(root)
	usernsFD := -1
	if userns != "" {
		if usernsFD, err = unix.Open(userns, unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
			return nil, fmt.Errorf("open VM user namespace: %w", err)
		}
		defer unix.Close(usernsFD)
	}
	var out [][]specs.Mount
	for i, m := range ms {
		if m.Image != nil {
			return nil, fmt.Errorf("%w: image volumes", ErrUnimplemented)
		}
		if m.RecursiveReadOnly && !m.Readonly {
			return nil, fmt.Errorf("%w: mount %q: recursive read-only needs readonly", ErrInvalid, m.ContainerPath)
		}
		if m.RecursiveReadOnly && m.Propagation != runtime.MountPropagation_PROPAGATION_PRIVATE {
			// A mount propagated in later could not be made read-only.
			return nil, fmt.Errorf("%w: mount %q: recursive read-only needs private propagation, not %v", ErrInvalid, m.ContainerPath, m.Propagation)
		}
		if !filepath.IsAbs(m.ContainerPath) || !filepath.IsAbs(m.HostPath) {
			return nil, fmt.Errorf("%w: mount %q -> %q: paths must be absolute", ErrInvalid, m.HostPath, m.ContainerPath)
		}
		st, err := os.Stat(m.HostPath)
		if errors.Is(err, os.ErrNotExist) {
			// As containerd does: a missing host directory is created.
			if err := os.MkdirAll(m.HostPath, 0o755); err != nil {
				return nil, fmt.Errorf("create mount source %s: %w", m.HostPath, err)
			}
			st, err = os.Stat(m.HostPath)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: mount source %s: %v", ErrInvalid, m.HostPath, err)
		}
		name := fmt.Sprintf("%s%d", prefix, i)
		// A private volume's submounts get entries of their own, bound
		// over their places in the guest: a clone holding them would pin
		// their mount points on the host, whose rmdir then fails (EBUSY)
		// while the pod lives. A propagating volume is cloned whole, as
		// later mounts must reach it.
		var subs []string
		if m.Propagation == runtime.MountPropagation_PROPAGATION_PRIVATE && st.IsDir() {
			if subs, err = submounts(m.HostPath); err != nil {
				return nil, err
			}
		}
		if err := mountVolume(root, name, usernsFD, m, st.IsDir(), m.Propagation != runtime.MountPropagation_PROPAGATION_PRIVATE); err != nil {
			return nil, fmt.Errorf("mount %s: %w", m.HostPath, err)
		}
		// Read-only is enforced by the host mount (see mountVolume); the
		// guest cannot tell submounts apart over 9p.
		group := []specs.Mount{{
			Destination: m.ContainerPath, Type: "bind",
			Source: agentapi.SharedDir + "/" + name, Options: []string{"rbind", "rw"},
		}}
		for k, sub := range subs {
			rel, _ := filepath.Rel(m.HostPath, sub)
			sm := &runtime.Mount{HostPath: sub, ContainerPath: filepath.Join(m.ContainerPath, rel), Readonly: m.RecursiveReadOnly}
			sst, err := os.Stat(sub)
			if err != nil {
				return nil, fmt.Errorf("%w: submount %s: %v", ErrInvalid, sub, err)
			}
			subName := fmt.Sprintf("%s.%d", name, k)
			if err := mountVolume(root, subName, usernsFD, sm, sst.IsDir(), false); err != nil {
				return nil, fmt.Errorf("mount %s: %w", sub, err)
			}
			group = append(group, specs.Mount{
				Destination: sm.ContainerPath, Type: "bind",
				Source: agentapi.SharedDir + "/" + subName, Options: []string{"rbind", "rw"},
			})
		}
		out = append(out, group)
	}
	return out, nil
}

// submounts lists the mount points below dir, shallowest first (mounts
// stacked on one point in the order they were made).
func submounts(dir string) ([]string, error) {
	dir = filepath.Clean(dir)
	ms, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	var out []string
	for _, m := range ms {
		if m.Mountpoint != dir {
			out = append(out, m.Mountpoint)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return strings.Count(out[i], "/") < strings.Count(out[j], "/") })
	return slices.Compact(out), nil
}

// mountVolume clones m.HostPath's mount (with its submounts if recursive),
// idmaps it to the VM's user
// namespace (when the filesystems allow it), and attaches it on a new entry
// name of the directory root, by fd.
func mountVolume(root int, name string, usernsFD int, m *runtime.Mount, dir, recursive bool) error {
	flags := uint(unix.OPEN_TREE_CLONE | unix.OPEN_TREE_CLOEXEC)
	if recursive {
		flags |= unix.AT_RECURSIVE
	}
	tree, err := unix.OpenTree(unix.AT_FDCWD, m.HostPath, flags)
	if err != nil {
		return fmt.Errorf("clone mount: %w", err)
	}
	defer unix.Close(tree)
	if usernsFD >= 0 {
		attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP, Userns_fd: uint64(usernsFD)}
		if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &attr); err != nil {
			// A filesystem without idmapped mounts (NFS, FUSE...): the
			// VM sees its files as owned by nobody.
			klog.InfoS("volume cannot be idmapped; the pod sees it owned by nobody", "path", m.HostPath, "err", err)
		}
	}
	if m.Readonly {
		// CRI's read-only covers the top mount only, and its submounts
		// stay writable; recursive read-only covers them all. Either way
		// the host enforces it: the guest's writes fail in QEMU's file
		// server, whatever the guest kernel does.
		flags := uint(unix.AT_EMPTY_PATH)
		if m.RecursiveReadOnly {
			flags |= unix.AT_RECURSIVE
		}
		if err := unix.MountSetattr(tree, "", flags, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}); err != nil {
			return fmt.Errorf("make read-only: %w", err)
		}
	}
	var target int
	if dir {
		if err := unix.Mkdirat(root, name, 0o755); err != nil {
			return fmt.Errorf("mount point: %w", err)
		}
		target, err = unix.Openat(root, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	} else {
		var fd int
		if fd, err = unix.Openat(root, name, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644); err == nil {
			unix.Close(fd)
			target, err = unix.Openat(root, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		}
	}
	if err != nil {
		return fmt.Errorf("mount point: %w", err)
	}
	defer unix.Close(target)
	var st unix.Stat_t
	if err := unix.Fstat(target, &st); err != nil {
		return err
	}
	if want := map[bool]uint32{true: unix.S_IFDIR, false: unix.S_IFREG}[dir]; st.Mode&unix.S_IFMT != want {
		return fmt.Errorf("mount point %s was replaced", name)
	}
	if err := unix.MoveMount(tree, "", target, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return fmt.Errorf("attach mount: %w", err)
	}
	prop := uint64(unix.MS_PRIVATE)
	switch m.Propagation {
	case runtime.MountPropagation_PROPAGATION_HOST_TO_CONTAINER:
		prop = unix.MS_SLAVE
	case runtime.MountPropagation_PROPAGATION_BIDIRECTIONAL:
		prop = unix.MS_SHARED
	}
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &unix.MountAttr{Propagation: prop}); err != nil {
		return fmt.Errorf("set propagation: %w", err)
	}
	return nil
}

// unshareMounts unmounts and removes the shared entries starting with
// prefix ("" for all). It never removes recursively: an entry still mounted
// would expose host files to deletion, so it is left and reported.
func unshareMounts(shared, prefix string) error {
	if !filepath.IsAbs(shared) || filepath.Clean(shared) == "/" {
		return fmt.Errorf("refusing to unmount under %q", shared)
	}
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(shared))
	if err != nil {
		return fmt.Errorf("read mounts: %w", err)
	}
	// Deepest first.
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i].Mountpoint) > len(mounts[j].Mountpoint) })
	for _, m := range mounts {
		rel, err := filepath.Rel(shared, m.Mountpoint)
		if err != nil || rel == "." || !strings.HasPrefix(rel, prefix) {
			continue
		}
		if err := unix.Unmount(m.Mountpoint, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("unmount %s: %w", m.Mountpoint, err)
		}
	}
	ents, err := os.ReadDir(shared)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			if err := os.Remove(filepath.Join(shared, e.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// removeShared empties and removes a pod's shared directory.
func removeShared(shared string) error {
	if shared == "" {
		return nil
	}
	if err := unshareMounts(shared, ""); err != nil {
		return err
	}
	if err := unix.Unmount(shared, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount shared directory: %w", err)
	}
	if err := os.Remove(shared); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove shared directory: %w", err)
	}
	return nil
}

// hostBinds are a container's CRI volumes as the spec's bind mounts of
// their host paths: what NRI plugins see, before the volumes are shared.
func hostBinds(ms []*runtime.Mount) []specs.Mount {
	var out []specs.Mount
	for _, m := range ms {
		opts := []string{"rbind", "rw"}
		if m.Readonly {
			opts[1] = "ro"
		}
		out = append(out, specs.Mount{Destination: m.ContainerPath, Type: "bind", Source: m.HostPath, Options: opts})
	}
	return out
}

type mountKey struct{ dst, src, typ string }

func keyOf(m specs.Mount) mountKey {
	return mountKey{filepath.Clean(m.Destination), filepath.Clean(m.Source), m.Type}
}

// guestSourced are the spec's mounts that are not CRI volumes: the ones
// the spec made of the guest's own files (proc, /dev, the pod's hosts
// file...).
func guestSourced(spec []specs.Mount, volumes []*runtime.Mount) map[mountKey]bool {
	vols := map[mountKey]bool{}
	for _, m := range hostBinds(volumes) {
		vols[keyOf(m)] = true
	}
	out := map[mountKey]bool{}
	for _, m := range spec {
		if !vols[keyOf(m)] {
			out[keyOf(m)] = true
		}
	}
	return out
}

// volumesOf finds the host binds in a spec whose plugins are done with it:
// the CRI volumes they kept and the bind mounts they added, which name host
// paths too. It returns them as CRI mounts and the index of each in spec.
func volumesOf(spec []specs.Mount, volumes []*runtime.Mount, guest map[mountKey]bool) ([]*runtime.Mount, []int) {
	var (
		out []*runtime.Mount
		at  []int
	)
	for i, m := range spec {
		if guest[keyOf(m)] || !isBind(m) {
			continue
		}
		var v *runtime.Mount
		for _, c := range volumes {
			if filepath.Clean(c.ContainerPath) == filepath.Clean(m.Destination) && filepath.Clean(c.HostPath) == filepath.Clean(m.Source) {
				v = c
				break
			}
		}
		if v == nil {
			// Added by a plugin: read-only if it says so, private.
			v = &runtime.Mount{ContainerPath: m.Destination, HostPath: m.Source}
			for _, o := range m.Options {
				if o == "ro" {
					v.Readonly = true
				}
			}
		}
		out = append(out, v)
		at = append(at, i)
	}
	return out, at
}

func isBind(m specs.Mount) bool {
	if m.Type == "bind" || m.Type == "rbind" {
		return true
	}
	for _, o := range m.Options {
		if o == "bind" || o == "rbind" {
			return true
		}
	}
	return false
}

// placeVolumes replaces the spec mount at each index in at with the guest
// mounts of its volume.
func placeVolumes(spec []specs.Mount, at []int, groups [][]specs.Mount) []specs.Mount {
	var out []specs.Mount
	k := 0
	for i, m := range spec {
		if k < len(at) && at[k] == i {
			out = append(out, groups[k]...)
			k++
			continue
		}
		out = append(out, m)
	}
	return out
}
