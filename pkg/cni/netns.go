package cni

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netns"
)

// netnsDir is where named network namespaces are bind-mounted (ip netns).
const netnsDir = "/var/run/netns"

// NewNetNS creates the named network namespace and returns its path. The
// calling goroutine's namespace is left unchanged.
func NewNetNS(name string) (string, error) {
	err := onThread(func() error {
		ns, err := netns.NewNamed(name)
		if err != nil {
			return fmt.Errorf("create netns %s: %w", name, err)
		}
		return ns.Close()
	})
	if err != nil {
		return "", err
	}
	return filepath.Join(netnsDir, name), nil
}

// onThread runs fn on an OS thread of its own, which fn may move into other
// network namespaces. The thread goes back to the Go scheduler only once it
// is in its original namespace again; if that fails, its goroutine exits
// still locked and Go ends the thread, so no goroutine ever runs in a pod's
// namespace by accident.
func onThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("current netns: %w", err)
			return
		}
		defer orig.Close()
		err = fn()
		if rerr := netns.Set(orig); rerr != nil {
			errc <- errors.Join(err, fmt.Errorf("restore netns: %w", rerr))
			return // locked: the thread dies with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

// DeleteNetNS removes a named namespace; a missing one is no error.
func DeleteNetNS(name string) error {
	if _, err := os.Stat(filepath.Join(netnsDir, name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := netns.DeleteNamed(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete netns %s: %w", name, err)
	}
	return nil
}
