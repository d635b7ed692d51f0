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
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return "", fmt.Errorf("current netns: %w", err)
	}
	defer orig.Close()
	ns, err := netns.NewNamed(name)
	if err != nil {
		netns.Set(orig)
		return "", fmt.Errorf("create netns %s: %w", name, err)
	}
	ns.Close()
	if err := netns.Set(orig); err != nil {
		// This thread is in the wrong namespace: let it die with the goroutine.
		runtime.UnlockOSThread()
		return "", fmt.Errorf("restore netns: %w", err)
	}
	return filepath.Join(netnsDir, name), nil
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
