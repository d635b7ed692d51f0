package propagate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// watchInterval is the least time between two syncs of the watch.
const watchInterval = 100 * time.Millisecond

// Relay keeps one pod VM's jail in step with the host's mounts in its
// propagating volumes.
type Relay struct {
	pid    int
	shared string

	// turn is held (a send) by one Sync at a time, and by the watch's
	// release, so waiters can give up; it guards what follows: the
	// descriptors taken once at Start (never looked up by pid again, which
	// a dead VM's successor could reuse): the VM process, its mount and
	// user namespaces, its mountinfo (polled and read).
	turn             chan struct{}
	closed           bool
	pidFD, mountInfo int
	mountNS, userNS  *os.File
	failed           map[op]bool // not tried again while they last
	stop             int         // eventfd that ends the watch
	done             chan struct{}
	closeOnce        sync.Once
}

// Start relays for the jail of process pid, whose shared directory is
// shared on the host: on every change of the jail's mount table until
// Close or the process's exit, and on Sync.
func Start(pid int, shared string) (_ *Relay, retErr error) {
	r := &Relay{pid: pid, shared: filepath.Clean(shared), pidFD: -1, mountInfo: -1, stop: -1,
		failed: map[op]bool{}, done: make(chan struct{}), turn: make(chan struct{}, 1)}
	defer func() {
		if retErr != nil {
			r.release()
		}
	}()
	var err error
	if r.pidFD, err = unix.PidfdOpen(pid, 0); err != nil {
		return nil, fmt.Errorf("pidfd of the VM: %w", err)
	}
	if r.mountNS, err = os.Open(fmt.Sprintf("/proc/%d/ns/mnt", pid)); err != nil {
		return nil, fmt.Errorf("VM mount namespace: %w", err)
	}
	if r.userNS, err = os.Open(fmt.Sprintf("/proc/%d/ns/user", pid)); err != nil {
		return nil, fmt.Errorf("VM user namespace: %w", err)
	}
	// A raw descriptor: Go's poller, which os.Open registers files with,
	// would see (and so consume) the change events first.
	if r.mountInfo, err = unix.Open(fmt.Sprintf("/proc/%d/mountinfo", pid), unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
		return nil, fmt.Errorf("VM mount table: %w", err)
	}
	// Still the process the pidfd names, so the namespaces are its own.
	if err := unix.PidfdSendSignal(r.pidFD, 0, nil, 0); err != nil {
		return nil, fmt.Errorf("VM process: %w", err)
	}
	if err := checkNamespaces(r.mountNS, r.userNS); err != nil {
		return nil, err
	}
	if r.stop, err = unix.Eventfd(0, unix.EFD_CLOEXEC); err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	go r.watch()
	return r, nil
}

// checkNamespaces makes sure the mount namespace belongs to the user
// namespace whose idmapping the clones get, and that this one is a child of
// the daemon's: a VM that made namespaces of its own (where it would have
// the privileges over mounts the relay relies on it not having) is refused.
func checkNamespaces(mountNS, userNS *os.File) error {
	owner, err := unix.IoctlRetInt(int(mountNS.Fd()), unix.NS_GET_USERNS)
	if err != nil {
		return fmt.Errorf("owner of the VM mount namespace: %w", err)
	}
	defer unix.Close(owner)
	parent, err := unix.IoctlRetInt(int(userNS.Fd()), unix.NS_GET_PARENT)
	if err != nil {
		return fmt.Errorf("parent of the VM user namespace: %w", err)
	}
	defer unix.Close(parent)
	var o, u, p, self unix.Stat_t
	if err := errors.Join(unix.Fstat(owner, &o), unix.Fstat(int(userNS.Fd()), &u), unix.Fstat(parent, &p), unix.Stat("/proc/self/ns/user", &self)); err != nil {
		return err
	}
	if o.Dev != u.Dev || o.Ino != u.Ino {
		return errors.New("the VM's mount namespace is not owned by its user namespace")
	}
	if p.Dev != self.Dev || p.Ino != self.Ino {
		return errors.New("the VM's user namespace is not a child of the daemon's")
	}
	return nil
}

// watch syncs whenever the jail's mount table changes (mountinfo polls
// with POLLPRI then), until Close or the VM's exit.
func (r *Relay) watch() {
	defer close(r.done)
	defer func() {
		r.turn <- struct{}{}
		r.release()
		<-r.turn
	}()
	fds := []unix.PollFd{
		{Fd: int32(r.mountInfo), Events: unix.POLLPRI},
		{Fd: int32(r.stop), Events: unix.POLLIN},
		{Fd: int32(r.pidFD), Events: unix.POLLIN},
	}
	for {
		for i := range fds {
			fds[i].Revents = 0
		}
		if _, err := unix.Poll(fds, -1); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			klog.ErrorS(err, "watch the VM's mounts", "pid", r.pid)
			return
		}
		if fds[1].Revents != 0 || fds[2].Revents != 0 {
			return
		}
		if fds[0].Revents&(unix.POLLPRI|unix.POLLERR) != 0 {
			ctx, cancel := context.WithTimeout(context.Background(), helperTimeout)
			if err := r.Sync(ctx); err != nil {
				klog.ErrorS(err, "relay host mounts into the VM", "pid", r.pid)
			}
			cancel()
			// Changes meanwhile are taken together by the next sync: a
			// mount table that keeps changing costs a few syncs a second.
			time.Sleep(watchInterval)
		}
		if fds[0].Revents&unix.POLLNVAL != 0 {
			return
		}
	}
}

// release closes the descriptors (the caller holds the turn, or nothing
// else has the relay).
func (r *Relay) release() {
	r.closed = true
	for _, fd := range []*int{&r.pidFD, &r.mountInfo} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
	for _, f := range []**os.File{&r.mountNS, &r.userNS} {
		if *f != nil {
			(*f).Close()
			*f = nil
		}
	}
}

// Sync relays the host's mounts made so far: when it returns, each is
// visible to the VM with its owners, and clones of those gone are removed.
// It waits for a sync in progress no longer than ctx allows.
func (r *Relay) Sync(ctx context.Context) error {
	select {
	case r.turn <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-r.turn }()
	// An outdated clone is detached in one round and made again in the
	// next.
	for round := 0; round < 3 && !r.closed; round++ {
		if done, err := r.syncOnce(ctx); done || err != nil {
			return err
		}
	}
	return nil
}

// stagePrefix names the shared directory's entries where clones wait for
// the jail to take them (plan looks only below entries, never at them).
const stagePrefix = ".relay-"

// syncOnce does one round of Sync; done when nothing was left to do.
func (r *Relay) syncOnce(ctx context.Context) (done bool, _ error) {
	host, err := mountinfo.GetMounts(mountinfo.PrefixFilter(r.shared))
	if err != nil {
		return false, fmt.Errorf("read host mounts: %w", err)
	}
	dir, err := unix.Open(r.shared, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Errorf("open shared directory: %w", err)
	}
	defer unix.Close(dir)
	// Staged clones a daemon killed halfway left.
	for _, h := range host {
		if name, ok := below(r.shared, h.Mountpoint); ok && strings.HasPrefix(name, stagePrefix) && !strings.Contains(name, "/") {
			unstage(dir, name)
		}
	}
	jail, err := r.readJail()
	if err != nil {
		return false, fmt.Errorf("read VM mounts: %w", err)
	}
	req := plan(r.shared, host, jail)
	// Failures last as long as the mount they failed on.
	pending := map[op]bool{}
	for _, o := range append(req.Attach, req.Detach...) {
		if r.failed[o] {
			pending[o] = true
		}
	}
	r.failed = pending
	known := func(o op) bool { return r.failed[o] }
	req.Attach = nested(slices.DeleteFunc(req.Attach, known))
	req.Detach = slices.DeleteFunc(req.Detach, known)
	var staged []op
	defer func() {
		for _, o := range staged {
			unstage(dir, o.Stage)
		}
	}()
	for _, o := range req.Attach {
		o.Stage = fmt.Sprintf("%s%d", stagePrefix, o.Host)
		err := r.stage(dir, o)
		if errors.Is(err, errMoved) || errors.Is(err, unix.ENOENT) {
			continue // gone or moved meanwhile: the next change says
		}
		if err != nil {
			r.fail(o, err)
			continue
		}
		staged = append(staged, o)
	}
	req.Attach = staged
	if len(req.Attach)+len(req.Detach) == 0 {
		return true, nil
	}
	failed, err := run(ctx, r.mountNS, req)
	if err != nil {
		return false, err
	}
	for _, f := range failed {
		list := req.Attach
		if f.Detach {
			list = req.Detach
		}
		if f.Index >= 0 && f.Index < len(list) {
			r.fail(list[f.Index], errors.New(f.Err))
		}
	}
	klog.V(2).InfoS("relayed host mounts into the VM", "pid", r.pid, "attached", len(req.Attach), "detached", len(req.Detach), "failed", len(failed))
	return len(req.Detach) == 0, nil
}

// fail logs an op that could not be done, once while the mount lasts. A
// filesystem without idmapped mounts, say: the VM sees what the kernel
// propagated.
func (r *Relay) fail(o op, err error) {
	klog.InfoS("host mount not relayed into the VM", "pid", r.pid, "path", o.Path, "err", err)
	r.failed[o] = true
}

// stage makes the idmapped clone of the host's copy at o.Path and attaches
// it on the shared directory's entry o.Stage, from where it propagates into
// the jail with its flags and submounts locked by the kernel (a clone moved
// in from outside would not be). The path is under a volume, which the
// guest writes: it is opened without symlinks, beneath the shared
// directory, and must be the root of the very mount the host's table lists
// (which only the host fills). The directory itself only root writes.
func (r *Relay) stage(dir int, o op) error {
	at, err := openMount(dir, o.Path, o.Host)
	if err != nil {
		return err
	}
	defer unix.Close(at)
	tree, err := unix.OpenTree(at, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH|unix.AT_RECURSIVE)
	if err != nil {
		return fmt.Errorf("clone: %w", err)
	}
	defer unix.Close(tree)
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP, Userns_fd: uint64(r.userNS.Fd())}
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &attr); err != nil {
		return fmt.Errorf("idmap: %w", err)
	}
	// A slave: nothing mounted under it in the jail could reach the host.
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &unix.MountAttr{Propagation: unix.MS_SLAVE}); err != nil {
		return fmt.Errorf("make slave: %w", err)
	}
	unstage(dir, o.Stage)
	if err := unix.Mkdirat(dir, o.Stage, 0o700); err != nil {
		return fmt.Errorf("stage: %w", err)
	}
	target, err := unix.Openat(dir, o.Stage, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("stage: %w", err)
	}
	defer unix.Close(target)
	if err := unix.MoveMount(tree, "", target, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		unstage(dir, o.Stage)
		return fmt.Errorf("stage: %w", err)
	}
	return nil
}

// unstage takes a staged clone away (its copy in the jail goes with it).
func unstage(dir int, name string) {
	for unix.Unmount(fmt.Sprintf("/proc/self/fd/%d/%s", dir, name), unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW) == nil {
	}
	unix.Unlinkat(dir, name, unix.AT_REMOVEDIR)
}

// readJail reads the jail's mount table through the descriptor taken at
// Start.
func (r *Relay) readJail() ([]*mountinfo.Info, error) {
	if _, err := unix.Seek(r.mountInfo, 0, 0); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(r.mountInfo, buf)
		if err != nil {
			return nil, err
		}
		if n == 0 {
			break
		}
		b.Write(buf[:n])
	}
	return mountinfo.GetMountsFromReader(&b, nil)
}

// Close ends the watch, waiting for a sync in progress no longer than the
// helper's timeout. The relayed mounts go with the jail.
func (r *Relay) Close() {
	r.closeOnce.Do(func() {
		if _, err := unix.Write(r.stop, []byte{1, 0, 0, 0, 0, 0, 0, 0}); err != nil {
			klog.ErrorS(err, "stop the mount relay", "pid", r.pid)
		}
		select {
		case <-r.done:
			unix.Close(r.stop)
		case <-time.After(2 * helperTimeout):
			// A filesystem hung under a volume: the watch ends (and
			// closes its descriptors) when the sync does.
			klog.InfoS("mount relay still busy; leaving it to end on its own", "pid", r.pid)
		}
	})
}
