package main

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
)

// podNamespaces points the spec's namespaces named "pod" at the pod's
// holder: the shared PID namespace, and the user and IPC namespaces of a
// pod with ID mappings. A container joining the pod's user namespace takes
// no mappings of its own. c.mu is held.
func (c *containers) podNamespaces(spec *specs.Spec) error {
	for i, ns := range spec.Linux.Namespaces {
		if ns.Path != "pod" {
			continue
		}
		var name string
		switch {
		case ns.Type == specs.PIDNamespace && c.sharePID:
			name = "pid"
		case ns.Type == specs.UserNamespace && c.uidMap != nil:
			name = "user"
		case ns.Type == specs.IPCNamespace && c.uidMap != nil:
			name = "ipc"
		default:
			return status.Errorf(codes.FailedPrecondition, "the pod has no %s namespace to share", ns.Type)
		}
		spec.Linux.Namespaces[i].Path = fmt.Sprintf("/proc/%d/ns/%s", c.holderPID, name)
	}
	if usesPodUserns(spec) {
		spec.Linux.UIDMappings, spec.Linux.GIDMappings = nil, nil
	}
	return nil
}

// usesPodUserns says whether the spec joins the pod's user namespace.
func usesPodUserns(spec *specs.Spec) bool {
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.UserNamespace && ns.Path != "" {
			return true
		}
	}
	return false
}

// idmappedImage returns a mount of the image at lower idmapped into the
// pod's user namespace, making it once per image: the image's files,
// owned by root on the disk, are then owned by the pod's root. c.mu is held.
func (c *containers) idmappedImage(imageID, lower string) (string, error) {
	if dir, ok := c.idmapped[imageID]; ok {
		return dir, nil
	}
	ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/user", c.holderPID))
	if err != nil {
		return "", status.Errorf(codes.Internal, "open the pod's user namespace: %v", err)
	}
	defer ns.Close()
	tree, err := unix.OpenTree(unix.AT_FDCWD, lower, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return "", status.Errorf(codes.Internal, "clone image mount: %v", err)
	}
	defer unix.Close(tree)
	attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP | unix.MOUNT_ATTR_RDONLY, Userns_fd: uint64(ns.Fd())}
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH, attr); err != nil {
		return "", status.Errorf(codes.Internal, "idmap image mount: %v", err)
	}
	dir := filepath.Clean(lower) + "-idmapped"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", status.Errorf(codes.Internal, "mkdir: %v", err)
	}
	if err := unix.MoveMount(tree, "", unix.AT_FDCWD, dir, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return "", status.Errorf(codes.Internal, "attach idmapped image: %v", err)
	}
	c.idmapped[imageID] = dir
	return dir, nil
}

func sysIDMaps(in []*agentapi.IDMapping) []syscall.SysProcIDMap {
	out := make([]syscall.SysProcIDMap, 0, len(in))
	for _, m := range in {
		out = append(out, syscall.SysProcIDMap{ContainerID: int(m.ContainerId), HostID: int(m.HostId), Size: int(m.Size)})
	}
	return out
}

func specIDMaps(in []*agentapi.IDMapping) []specs.LinuxIDMapping {
	out := make([]specs.LinuxIDMapping, 0, len(in))
	for _, m := range in {
		out = append(out, specs.LinuxIDMapping{ContainerID: m.ContainerId, HostID: m.HostId, Size: m.Size})
	}
	return out
}

// hostID maps id through a user namespace's mappings to the VM's ID.
func hostID(maps []specs.LinuxIDMapping, id uint32) (uint32, bool) {
	for _, m := range maps {
		if id >= m.ContainerID && id-m.ContainerID < m.Size {
			return m.HostID + (id - m.ContainerID), true
		}
	}
	return 0, false
}
