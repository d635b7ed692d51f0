package propagate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The helper runs before main in any binary that links this package, as
// the jail's does: the binary is re-executed as "hyperlet-propagate" to
// join the jail's mount namespace, which a multi-threaded daemon cannot do
// without moving every thread's view of the filesystem.
const helperName = "hyperlet-propagate"

// The helper gets the jail's mount namespace on fd 3 and the request on
// stdin.
const mountNSFD = 3

type request struct {
	// Share is the jail's path of the pod's shared directory.
	Share  string `json:"share"`
	Attach []op   `json:"attach,omitempty"`
	Detach []op   `json:"detach,omitempty"`
}

// result is an op that failed (by its index in the request), and why.
type result struct {
	Detach bool   `json:"detach,omitempty"`
	Index  int    `json:"index"`
	Err    string `json:"err"`
}

func init() {
	if len(os.Args) != 1 || os.Args[0] != helperName {
		return
	}
	// All of it happens on this thread: setns applies to it alone.
	runtime.LockOSThread()
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", helperName, err)
		os.Exit(127)
	}
	failed, err := serve(req)
	if err == nil {
		err = json.NewEncoder(os.Stdout).Encode(failed)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", helperName, err)
		os.Exit(1)
	}
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
	// A path gone or moved meanwhile is not a failure: the next change
	// of the mount table brings another sync.
	var failed []result
	report := func(detach bool, i int, err error) {
		if err != nil && !errors.Is(err, errMoved) && !errors.Is(err, unix.ENOENT) {
			failed = append(failed, result{Detach: detach, Index: i, Err: err.Error()})
		}
	}
	for i, o := range req.Attach {
		report(false, i, attach(share, o))
	}
	for i, o := range req.Detach {
		report(true, i, detach(share, o))
	}
	return failed, nil
}

// errMoved is a path that no longer leads to the mount it led to.
var errMoved = errors.New("the path changed")

// openBeneath opens path below dir as an O_PATH descriptor, without
// following symlinks (the guest writes in the volumes) or leaving dir.
func openBeneath(dir int, path string, flags uint64) (int, error) {
	return unix.Openat2(dir, path, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC | flags,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
}

// mountOf says which mount fd is in, and whether fd is that mount's root
// (true where the kernel cannot tell).
func mountOf(fd int) (id uint64, root bool, err error) {
	var st unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_STATX_DONT_SYNC, unix.STATX_MNT_ID, &st); err != nil {
		return 0, false, err
	}
	root = st.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT == 0 || st.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0
	return st.Mnt_id, root, nil
}

// openMount opens path below dir (openBeneath) and checks that it is the
// root of mount id.
func openMount(dir int, path string, id int) (int, error) {
	fd, err := openBeneath(dir, path, 0)
	if err != nil {
		return -1, err
	}
	mnt, root, err := mountOf(fd)
	if err == nil && (mnt != uint64(id) || !root) {
		err = fmt.Errorf("%s is not mount %d: %w", path, id, errMoved)
	}
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// attach clones the staged mount o.Stage (the jail's copy of the clone the
// daemon made: the kernel locked its flags and submounts on the way in, as
// for every mount reaching a less privileged namespace) and stacks it on
// top of the jail's mount o.
func attach(share int, o op) error {
	staged, err := openBeneath(share, o.Stage, 0)
	if err != nil {
		return fmt.Errorf("staged clone: %w", err)
	}
	defer unix.Close(staged)
	if _, root, err := mountOf(staged); err != nil || !root {
		return fmt.Errorf("staged clone %s is not a mount: %w", o.Stage, errMoved)
	}
	tree, err := unix.OpenTree(staged, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH|unix.AT_RECURSIVE)
	if err != nil {
		return fmt.Errorf("clone: %w", err)
	}
	defer unix.Close(tree)
	at, err := openMount(share, o.Path, o.ID)
	if err != nil {
		return err
	}
	defer unix.Close(at)
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
		fd, err := openBeneath(share, strings.TrimSuffix(dir, "/"), unix.O_DIRECTORY)
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

// helperTimeout bounds one run of the helper (a hung filesystem under a
// volume must not hold the pod's execs and stop forever).
const helperTimeout = 10 * time.Second

// run starts the helper in the jail whose mount namespace is mntNS.
func run(ctx context.Context, mntNS *os.File, req request) ([]result, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, helperTimeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "/proc/self/exe")
	cmd.Args = []string{helperName}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(b), &stdout, &stderr
	cmd.ExtraFiles = []*os.File{mntNS}
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("mount propagation helper: %w: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	var failed []result
	if err := json.Unmarshal(stdout.Bytes(), &failed); err != nil {
		return nil, fmt.Errorf("mount propagation helper: %w", err)
	}
	return failed, nil
}
