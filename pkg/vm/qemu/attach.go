package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hyperlet/hyperlet/pkg/jail"
	"github.com/hyperlet/hyperlet/pkg/vm"
)

// Attach takes over a VM started earlier, by this daemon before a restart,
// from its directory (cfg as it was at Start). If the VM is gone, its leftover
// directory is removed and the error wraps vm.ErrNotRunning.
func (d *Driver) Attach(ctx context.Context, cfg vm.Config) (vm.VM, error) {
	pid, err := findQEMU(cfg)
	if err != nil {
		// Gone while no daemon watched it: what it left goes too.
		os.RemoveAll(cfg.Dir)
		if rel, cerr := d.cgroupPath(cfg); cerr == nil {
			jail.OpenCgroup(rel).Remove()
		}
		return nil, fmt.Errorf("attach vm %s: %w: %v", cfg.ID, vm.ErrNotRunning, err)
	}
	// A pidfd pins the process: no confusion with a reused pid from here on.
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("attach vm %s: pidfd: %w", cfg.ID, err)
	}
	v := &instance{
		cfg: cfg,
		pid: pid,
		drv: d,
		signal: func(s os.Signal) error {
			err := unix.PidfdSendSignal(pidfd, s.(syscall.Signal), nil, 0)
			if err == unix.ESRCH {
				return os.ErrProcessDone
			}
			return err
		},
		waitPID: func() error {
			defer unix.Close(pidfd)
			for {
				fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
				if _, err := unix.Poll(fds, -1); err != unix.EINTR {
					break
				}
			}
			// Not our child: its exit status is not ours to read.
			return &vm.ExitError{ID: cfg.ID, Reason: "exited while attached (status not observable)"}
		},
		exited: make(chan struct{}),
	}
	if err := d.reserveAttached(v); err != nil && !errors.Is(err, errNotJailed) {
		unix.Close(pidfd)
		return nil, fmt.Errorf("attach vm %s: %w", cfg.ID, err)
	}
	go v.wait()
	// A QEMU that does not answer (wedged, or stopped) within the deadline
	// is killed: a pod VM nobody can drive is worth nothing, and the
	// daemon must not wait on it to serve.
	ctx, cancel := context.WithTimeout(ctx, attachTimeout)
	defer cancel()
	err = v.waitQMP(ctx)
	if err == nil {
		// Disks hot-added before the restart keep their SCSI targets: the
		// next one goes after them.
		v.nextTarget, err = v.usedTargets(ctx)
	}
	if err != nil {
		v.Kill()
		return nil, fmt.Errorf("attach vm %s: QMP does not answer, killed it: %w: %v", cfg.ID, vm.ErrNotRunning, err)
	}
	return v, nil
}

// attachTimeout bounds taking over one VM.
const attachTimeout = 10 * time.Second

// usedTargets returns one past the highest target of the VM's hot-added
// disks (block nodes "diskN").
func (v *instance) usedTargets(ctx context.Context) (int, error) {
	raw, err := v.execute(ctx, "query-named-block-nodes", nil)
	if err != nil {
		return 0, err
	}
	var nodes []struct {
		NodeName string `json:"node-name"`
	}
	if err := json.Unmarshal(raw, &nodes); err != nil {
		return 0, fmt.Errorf("query-named-block-nodes: %w", err)
	}
	next := 0
	for _, n := range nodes {
		if s, ok := strings.CutPrefix(n.NodeName, "disk"); ok {
			if t, err := strconv.Atoi(s); err == nil && t+1 > next {
				next = t + 1
			}
		}
	}
	return next, nil
}

// findQEMU returns the pid in the VM's pid file if that process is the VM's
// QEMU.
func findQEMU(cfg vm.Config) (int, error) {
	pid, cmdline, err := readPidFile(cfg.Dir)
	if err != nil {
		return 0, err
	}
	if !bytes.Contains(cmdline, []byte("\x00hyperlet-"+cfg.ID+"\x00")) {
		return 0, fmt.Errorf("process %d is not the QEMU of vm %s", pid, cfg.ID)
	}
	return pid, nil
}

// readPidFile returns the pid in a VM directory's pid file and that
// process's command line.
func readPidFile(dir string) (int, []byte, error) {
	b, err := os.ReadFile(filepath.Join(dir, pidFile))
	if err != nil {
		return 0, nil, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, nil, fmt.Errorf("pid file: %w", err)
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return 0, nil, fmt.Errorf("process %d: %w", pid, err)
	}
	return pid, cmdline, nil
}

// RunningPIDs lists the live QEMU processes of VMs whose directories lie
// under root, by their pid files: a jailed QEMU's command line names no host
// path to look for.
func RunningPIDs(root string) []int {
	var out []int
	filepath.WalkDir(root, func(path string, e os.DirEntry, err error) error {
		if err != nil || e.IsDir() || e.Name() != pidFile {
			return nil
		}
		pid, cmdline, err := readPidFile(filepath.Dir(path))
		if err == nil && bytes.Contains(cmdline, []byte("\x00hyperlet-")) {
			out = append(out, pid)
		}
		return nil
	})
	return out
}
