package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/hyperlet/hyperlet/pkg/jail"
	"github.com/hyperlet/hyperlet/pkg/vm"
)

// sweepSuffixes are the files beside a VM directory that belong to it.
var sweepSuffixes = []string{".console", ".share"}

// Sweep stops the QEMU of every VM directory under root whose ID keep
// rejects, then removes those directories, the files beside them and their
// cgroups; see vm.Hypervisor.
func (d *Driver) Sweep(ctx context.Context, root string, keep func(id string) bool) ([]string, error) {
	ents, err := os.ReadDir(root)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	seen := map[string]bool{}
	var removed []string
	var errs []error
	for _, e := range ents {
		id := e.Name()
		for _, s := range sweepSuffixes {
			id = strings.TrimSuffix(id, s)
		}
		if seen[id] || keep(id) {
			continue
		}
		seen[id] = true
		dir := filepath.Join(root, id)
		if err := killOrphan(ctx, vm.Config{ID: id, Dir: dir}); err != nil {
			errs = append(errs, err)
			continue
		}
		for _, p := range append([]string{dir}, dir+sweepSuffixes[0], dir+sweepSuffixes[1]) {
			if err := os.RemoveAll(p); err != nil {
				errs = append(errs, err)
			}
		}
		removed = append(removed, id)
	}
	if len(removed) > 0 {
		// Their cgroups are under whatever parent their pods had.
		_, err := jail.SweepCgroups("hyperlet-vm-", func(id string) bool { return !seen[id] })
		errs = append(errs, err)
	}
	return removed, errors.Join(errs...)
}

// killOrphan kills the VM's QEMU, if its pid file names one that still
// runs, and waits until it is gone.
func killOrphan(ctx context.Context, cfg vm.Config) error {
	pid, err := findQEMU(cfg)
	if err != nil {
		return nil // no QEMU of this VM runs
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("sweep vm %s: pidfd: %w", cfg.ID, err)
	}
	defer unix.Close(pidfd)
	// The pid may have been reused between the check and the pidfd.
	if again, err := findQEMU(cfg); err != nil || again != pid {
		return nil
	}
	klog.InfoS("stopping a VM no record owns", "vm", cfg.ID, "pid", pid)
	if err := unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("sweep vm %s: kill: %w", cfg.ID, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	for {
		ms := int(time.Until(deadline).Milliseconds())
		if ms <= 0 {
			return fmt.Errorf("sweep vm %s: pid %d did not exit after SIGKILL", cfg.ID, pid)
		}
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, ms)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("sweep vm %s: %w", cfg.ID, err)
		}
		if n > 0 {
			return nil
		}
	}
}
