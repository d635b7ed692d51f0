package propagate

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// The helper runs before main in any binary that links this package, as
// the jail's does: the binary is re-executed as "hyperlet-propagate" to
// join the jail's mount namespace, which a multi-threaded daemon cannot do
// without moving every thread's view of the filesystem.
const helperName = "hyperlet-propagate"

// Descriptors the helper gets: the jail's mount namespace and the VM's
// user namespace (the idmapping).
const (
	mountNSFD = 3
	userNSFD  = 4
)

type request struct {
	// Share is the jail's path of the pod's shared directory.
	Share  string `json:"share"`
	Attach []op   `json:"attach,omitempty"`
	Detach []op   `json:"detach,omitempty"`
}

// result is an op that failed, and why.
type result struct {
	op
	Err string `json:"err"`
}

func init() {
	if len(os.Args) != 2 || os.Args[0] != helperName {
		return
	}
	// All of it happens on this thread: setns applies to it alone.
	runtime.LockOSThread()
	var req request
	if err := json.Unmarshal([]byte(os.Args[1]), &req); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", helperName, err)
		os.Exit(127)
	}
	failed, err := serve(req)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", helperName, err)
		os.Exit(1)
	}
	json.NewEncoder(os.Stdout).Encode(failed)
	os.Exit(0)
}

// serve runs in the helper: it joins the jail's mount namespace and does
// the ops, returning those that failed.
func serve(req request) ([]result, error) {
	// A thread sharing its filesystem attributes cannot change mount
	// namespace.
	if err := unix.Unshare(unix.CLONE_FS); err != nil {
		return nil, fmt.Errorf("unshare filesystem attributes: %w", err)
	}
	if err := unix.Setns(mountNSFD, unix.CLONE_NEWNS); err != nil {
		return nil, fmt.Errorf("join the jail's mount namespace: %w", err)
	}
	share, err := unix.Open(req.Share, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open the jail's shared directory: %w", err)
	}
	var failed []result
	for _, o := range req.Attach {
		if err := attach(share, o); err != nil {
			failed = append(failed, result{o, err.Error()})
		}
	}
	for _, o := range req.Detach {
		if err := detach(share, o); err != nil {
			failed = append(failed, result{o, err.Error()})
		}
	}
	return failed, nil
}

// openMount opens path below the shared directory without following
// symlinks (the guest writes in the volumes) and checks that it is the root
// of mount id.
func openMount(share int, path string, id int) (int, error) {
	fd, err := unix.Openat2(share, path, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return -1, err
	}
	var st unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_MNT_ID, &st); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if st.Mnt_id != uint64(id) || st.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 && st.Attributes&unix.STATX_ATTR_MOUNT_ROOT == 0 {
		unix.Close(fd)
		return -1, fmt.Errorf("%s is not mount %d (the path changed)", path, id)
	}
	return fd, nil
}

// attach stacks an idmapped clone of mount o on top of it.
func attach(share int, o op) error {
	at, err := openMount(share, o.Path, o.ID)
	if err != nil {
		return err
	}
	defer unix.Close(at)
	tree, err := unix.OpenTree(at, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH|unix.AT_RECURSIVE)
	if err != nil {
		return fmt.Errorf("clone: %w", err)
	}
	defer unix.Close(tree)
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP, Userns_fd: userNSFD}
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &attr); err != nil {
		return fmt.Errorf("idmap: %w", err)
	}
	if err := unix.MoveMount(tree, "", at, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	return nil
}

// detach unmounts mount o, a relayed clone, from its parent directory.
func detach(share int, o op) error {
	dir, name := filepath.Split(o.Path)
	parent := share
	if dir != "" {
		fd, err := unix.Openat2(share, strings.TrimSuffix(dir, "/"), &unix.OpenHow{
			Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		})
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		parent = fd
	}
	fd, err := openMount(parent, name, o.ID)
	if err != nil {
		return err
	}
	unix.Close(fd)
	if err := unix.Fchdir(parent); err != nil {
		return err
	}
	if err := unix.Unmount(name, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil {
		return fmt.Errorf("unmount: %w", err)
	}
	return nil
}

// run starts the helper for the jail of process pid.
func run(pid int, req request) ([]result, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	var files []*os.File
	for _, ns := range []string{"mnt", "user"} {
		f, err := os.Open(fmt.Sprintf("/proc/%d/ns/%s", pid, ns))
		if err != nil {
			return nil, fmt.Errorf("open the VM's %s namespace: %w", ns, err)
		}
		defer f.Close()
		files = append(files, f)
	}
	var stdout, stderr bytes.Buffer
	cmd := &exec.Cmd{
		Path: "/proc/self/exe", Args: []string{helperName, string(b)},
		ExtraFiles: files, Stdout: &stdout, Stderr: &stderr,
	}
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("mount propagation helper: %w: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	var failed []result
	if err := json.Unmarshal(stdout.Bytes(), &failed); err != nil {
		return nil, fmt.Errorf("mount propagation helper: %w", err)
	}
	return failed, nil
}
