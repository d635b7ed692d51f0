package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/moby/sys/mountinfo"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
)

// Volumes reach the guest through one shared directory per pod, exported
// over virtio-9p. Each CRI mount is bind-mounted from its host path into
// that directory under "<container>-<n>", and the container's spec
// bind-mounts the guest's view of it. Readonly is enforced on the host bind
// (non-recursive, as CRI's readonly is); propagation flags apply to the host bind, as 9p
// carries no mount events into the guest; SELinux relabel requests are
// accepted and ignored (there is no SELinux in the guest).

// shareMounts bind-mounts a container's volumes into the pod's shared
// directory and returns the spec mounts that use them.
func shareMounts(shared, ctrID string, ms []*runtime.Mount) (_ []specs.Mount, retErr error) {
	if len(ms) == 0 {
		return nil, nil
	}
	if shared == "" {
		return nil, fmt.Errorf("%w: the pod has no shared directory", ErrUnsupported)
	}
	prefix := ctrID[:16] + "-"
	defer func() {
		if retErr != nil {
			unshareMounts(shared, prefix)
		}
	}()
	var out []specs.Mount
	for i, m := range ms {
		if m.Image != nil {
			return nil, fmt.Errorf("%w: image volumes", ErrUnimplemented)
		}
		if m.RecursiveReadOnly {
			return nil, fmt.Errorf("%w: recursive read-only mounts", ErrUnimplemented)
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
		target := filepath.Join(shared, name)
		if st.IsDir() {
			err = os.Mkdir(target, 0o755)
		} else {
			var f *os.File
			if f, err = os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644); err == nil {
				f.Close()
			}
		}
		if err != nil {
			return nil, fmt.Errorf("mount point for %s: %w", m.HostPath, err)
		}
		if err := unix.Mount(m.HostPath, target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			os.Remove(target)
			return nil, fmt.Errorf("bind %s: %w", m.HostPath, err)
		}
		if m.Readonly {
			if err := unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
				return nil, fmt.Errorf("make %s read-only: %w", m.HostPath, err)
			}
		}
		prop := uintptr(unix.MS_PRIVATE)
		switch m.Propagation {
		case runtime.MountPropagation_PROPAGATION_HOST_TO_CONTAINER:
			prop = unix.MS_SLAVE
		case runtime.MountPropagation_PROPAGATION_BIDIRECTIONAL:
			prop = unix.MS_SHARED
		}
		if err := unix.Mount("", target, "", prop|unix.MS_REC, ""); err != nil {
			return nil, fmt.Errorf("set propagation of %s: %w", m.HostPath, err)
		}
		// Read-only is enforced by the host bind, which covers the top
		// mount only (CRI's non-recursive read-only): submounts stay
		// writable. The guest cannot tell them apart over 9p.
		opts := []string{"rbind", "rw"}
		out = append(out, specs.Mount{
			Destination: m.ContainerPath, Type: "bind",
			Source: agentapi.SharedDir + "/" + name, Options: opts,
		})
	}
	return out, nil
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
	if err := os.Remove(shared); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove shared directory: %w", err)
	}
	return nil
}
