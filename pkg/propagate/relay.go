package propagate

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Relay keeps one pod VM's jail in step with the host's mounts in its
// propagating volumes.
type Relay struct {
	pid    int
	shared string

	mu sync.Mutex // serialises Sync
	// failed are jail mounts (by ID and path) that could not be relayed:
	// they are not tried again.
	failed map[op]bool

	stop int // eventfd that ends the watch
	done chan struct{}
}

// Start relays for the jail of process pid, whose shared directory is
// shared on the host: on every change of the jail's mount table until
// Close, and on Sync.
func Start(pid int, shared string) (*Relay, error) {
	mi, err := os.Open(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		return nil, fmt.Errorf("watch the VM's mounts: %w", err)
	}
	stop, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		mi.Close()
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	r := &Relay{pid: pid, shared: filepath.Clean(shared), failed: map[op]bool{}, stop: stop, done: make(chan struct{})}
	go r.watch(mi)
	return r, nil
}

// watch syncs whenever the jail's mount table changes (mountinfo polls
// with POLLPRI then).
func (r *Relay) watch(mi *os.File) {
	defer close(r.done)
	defer mi.Close()
	fds := []unix.PollFd{{Fd: int32(mi.Fd()), Events: unix.POLLPRI}, {Fd: int32(r.stop), Events: unix.POLLIN}}
	for {
		fds[0].Revents, fds[1].Revents = 0, 0
		if _, err := unix.Poll(fds, -1); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			klog.ErrorS(err, "watch the VM's mounts", "pid", r.pid)
			return
		}
		if fds[1].Revents != 0 {
			return
		}
		if fds[0].Revents&(unix.POLLPRI|unix.POLLERR) != 0 {
			if err := r.Sync(); err != nil {
				klog.ErrorS(err, "relay host mounts into the VM", "pid", r.pid)
			}
		}
		if fds[0].Revents&(unix.POLLHUP|unix.POLLNVAL) != 0 {
			return
		}
	}
}

// Sync relays the host's mounts made so far: when it returns, each is
// visible to the VM with its owners, and clones of those gone are removed.
func (r *Relay) Sync() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	host, err := mountinfo.GetMounts(mountinfo.PrefixFilter(r.shared))
	if err != nil {
		return fmt.Errorf("read host mounts: %w", err)
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/mountinfo", r.pid))
	if err != nil {
		return fmt.Errorf("read VM mounts: %w", err)
	}
	jail, err := mountinfo.GetMountsFromReader(f, nil)
	f.Close()
	if err != nil {
		return fmt.Errorf("read VM mounts: %w", err)
	}
	req := plan(r.shared, host, jail)
	known := func(o op) bool { return r.failed[o] }
	req.Attach = slices.DeleteFunc(req.Attach, known)
	req.Detach = slices.DeleteFunc(req.Detach, known)
	if len(req.Attach)+len(req.Detach) == 0 {
		return nil
	}
	failed, err := run(r.pid, req)
	if err != nil {
		return err
	}
	for _, f := range failed {
		// A filesystem without idmapped mounts, or a path the guest
		// changed meanwhile: logged once, and the VM sees what the
		// kernel propagated.
		klog.InfoS("host mount not relayed into the VM", "pid", r.pid, "path", f.Path, "err", f.Err)
		r.failed[f.op] = true
	}
	klog.V(2).InfoS("relayed host mounts into the VM", "pid", r.pid, "attached", len(req.Attach), "detached", len(req.Detach), "failed", len(failed))
	return nil
}

// Close ends the watch. The relayed mounts go with the jail.
func (r *Relay) Close() {
	unix.Write(r.stop, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	<-r.done
	unix.Close(r.stop)
}
