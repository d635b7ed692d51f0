// Package qemu runs hyperlet's VMs with QEMU's microvm machine: virtio-mmio
// devices, the uncompressed guest kernel booted directly (PVH), a QMP socket
// for control, the agent on a virtio-serial port, and a virtio-scsi
// controller for disks hot-added after boot.
package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
	"github.com/hyperlet/hyperlet/pkg/jail"
	"github.com/hyperlet/hyperlet/pkg/vm"
)

// DefaultBinary is the QEMU system emulator hyperlet runs.
const DefaultBinary = "qemu-system-x86_64"

// Driver starts QEMU microvm VMs.
type Driver struct {
	// Binary is the QEMU executable; DefaultBinary if empty.
	Binary string
	// TCGCacheMiB bounds TCG's translation cache (host memory per VM).
	TCGCacheMiB int
	// Jail confines every QEMU; zero fields take defaults.
	Jail JailOptions
}

var _ vm.Hypervisor = (*Driver)(nil)

// Files in a VM's directory. Short names: unix socket paths are limited to
// 107 bytes.
const (
	qmpSock     = "qmp.sock"
	agentSock   = "agent.sock"
	pidFile     = "qemu.pid"
	errFile     = "qemu.err"
	consoleFIFO = "console.fifo"
	jailRoot    = "root"
)

// maxSockPath is the longest unix socket path the kernel accepts.
const maxSockPath = 107

// defaultKernelArgs keep boot short and make a guest reboot end QEMU.
var defaultKernelArgs = []string{
	"console=ttyS0", "quiet", "reboot=t", "panic=-1", "pci=off", "nomodule",
	"i8042.noaux", "i8042.nomux", "i8042.dumbkbd", "cryptomgr.notests",
	"no_timer_check", "rcupdate.rcu_expedited=1",
	// The TSC is the guest's clock under KVM and TCG alike. Without this the
	// clocksource watchdog checks it against jiffies, and on a loaded host
	// (late timer interrupts) marks it unstable: the guest falls back to
	// jiffies and a periodic tick, which loads the host more. Seen with 200
	// idle pods under TCG.
	"tsc=reliable",
}

// noReportArgs turn free page reporting off in a guest whose RAM is a
// file: a template's builder and, through the template, its clones. QEMU
// 7.2 returns a freed page of file-backed RAM only by punching a hole in
// the file; a clone's is the template's sealed memfd, which refuses it (and
// unsealed, every other clone would read zeros there). So each report only
// failed, in guest work and a line in qemu.err, burying the lines that
// explain a VM's death. The agent sets the order above the largest block
// (MAX_ORDER 11 in Linux 6.1), so the guest never reports.
var noReportArgs = []string{"hyperlet.page_reporting_order=11"}

// Paths inside a VM's jail.
const (
	jailKernel = "/vm/kernel"
	jailInitrd = "/vm/initrd"
	jailShare  = "/share"
	jailQEMU   = "/vm/qemu"
)

// sandboxArgs turn on QEMU's seccomp filter: no obsolete syscalls, no
// setuid/setgid, no fork or exec, no scheduler or resource changes.
const sandboxArgs = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// fds numbers the files QEMU inherits: fd 3 is the first.
type fds struct{ files []*os.File }

func (f *fds) add(file *os.File) string {
	f.files = append(f.files, file)
	return strconv.Itoa(2 + len(f.files))
}

// launch is what one QEMU start passes in: the files it inherits.
type launch struct {
	qmp, agent, console, consoleKeep, state *os.File
}

// args returns QEMU's command line for cfg, as seen inside its jail, and
// the files it inherits.
func (d *Driver) args(cfg vm.Config, l launch) ([]string, []*os.File) {
	var f fds
	tapFD := ""
	if cfg.Net != nil && cfg.Net.Tap != nil {
		tapFD = f.add(cfg.Net.Tap) // fd 3
	}
	machine := "microvm,x-option-roms=off,rtc=off,acpi=off"
	accel := "tcg"
	cpu := "max"
	if cfg.Accel == vm.AccelKVM {
		// Without PIT and PIC the guest needs the TSC deadline timer, which
		// KVM provides and TCG does not.
		machine += ",pit=off,pic=off"
		accel = "kvm"
		cpu = "host"
	} else if d.TCGCacheMiB > 0 {
		accel += ",tb-size=" + strconv.Itoa(d.TCGCacheMiB)
	}
	if cfg.Memory != nil {
		machine += ",memory-backend=mem"
	}
	kargs := append(append([]string{}, defaultKernelArgs...), cfg.KernelArgs...)
	if cfg.Accel != vm.AccelKVM {
		kargs = append(kargs, tcgTSCArgs()...)
	}
	if cfg.Memory != nil {
		kargs = append(kargs, noReportArgs...)
	}
	console := f.add(l.console)
	f.add(l.consoleKeep) // inherited and held, never used (see prepare)
	args := []string{
		"-name", "hyperlet-" + cfg.ID, // how a restarted daemon knows its VMs (attach.go)
		"-name", "debug-threads=on", // vCPU threads named "CPU n/TCG"
		"-sandbox", sandboxArgs,
		"-M", machine,
		"-accel", accel,
		"-cpu", cpu,
		"-smp", strconv.Itoa(cfg.VCPUs),
		"-m", strconv.Itoa(cfg.MemoryMiB) + "M",
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-kernel", jailKernel,
		"-initrd", jailInitrd,
		"-append", strings.Join(kargs, " "),
		// The console goes to a pipe the daemon copies, capped, to the log.
		"-add-fd", "fd=" + console + ",set=1",
		"-chardev", "file,id=con,path=/dev/fdset/1,append=on",
		"-serial", "chardev:con",
		// Both sockets are the daemon's: QEMU only accepts on them.
		"-chardev", "socket,id=qmp,fd=" + f.add(l.qmp) + ",server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
		"-device", "virtio-serial-device,max_ports=2",
		"-chardev", "socket,id=agent,fd=" + f.add(l.agent) + ",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name=" + agentapi.Port,
		"-device", "virtio-scsi-device,id=scsi0",
		"-device", "virtio-rng-device",
		// Free page reporting: pages the guest frees go back to the host,
		// where its RAM is anonymous (noReportArgs).
		"-device", "virtio-balloon-device,free-page-reporting=on",
	}
	if m := cfg.Memory; m != nil {
		share := "off"
		if m.Shared {
			share = "on"
		}
		args = append(args, "-object", fmt.Sprintf("memory-backend-file,id=mem,size=%dM,mem-path=/proc/self/fd/%s,share=%s",
			cfg.MemoryMiB, f.add(m.File), share))
	}
	if cfg.Restore != "" {
		// Wait for migrate-incoming, sent once x-ignore-shared is set.
		args = append(args, "-incoming", "defer")
		f.add(l.state)
	}
	if cfg.Net != nil {
		// A NIC without a tap (a template's) sits alone on a hub.
		backend := "tap,id=net0,fd=" + tapFD
		if cfg.Net.Tap == nil {
			backend = "hubport,id=net0,hubid=0"
		}
		args = append(args,
			"-netdev", backend,
			"-device", "virtio-net-device,netdev=net0,mac="+cfg.Net.MAC)
	}
	if cfg.SharedDir != "" {
		// Files the host shares with the pod (volumes), over virtio-9p.
		// Guest ownership, modes, device nodes and setuid bits live in
		// xattrs, never in the host's inodes; submounts get distinct inode
		// numbers.
		args = append(args,
			"-fsdev", "local,id=shared,path="+jailShare+",security_model=mapped-xattr,multidevs=remap",
			"-device", "virtio-9p-device,fsdev=shared,mount_tag="+agentapi.SharedFSTag)
	}
	return args, f.files
}

// stateFD is the fd number of the saved state a clone loads: the last file
// args adds when cfg.Restore is set.
func stateFD(files []*os.File) string { return strconv.Itoa(2 + len(files)) }

// Start boots a VM in its jail; see vm.Hypervisor.
func (d *Driver) Start(ctx context.Context, cfg vm.Config) (_ vm.VM, retErr error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.ConsoleLog == "" {
		return nil, errors.New("vm config: ConsoleLog is required")
	}
	if p := filepath.Join(cfg.Dir, agentSock); len(p) > maxSockPath {
		return nil, fmt.Errorf("vm dir %s: socket path %d bytes long, limit is %d", cfg.Dir, len(p), maxSockPath)
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Dir), 0o711); err != nil {
		return nil, fmt.Errorf("create vm dir: %w", err)
	}
	// Traversable, not listable: the jail helper (an unprivileged uid)
	// mounts on its root/ inside.
	if err := os.Mkdir(cfg.Dir, 0o711); err != nil {
		return nil, fmt.Errorf("create vm dir: %w", err)
	}
	defer func() {
		if retErr != nil {
			os.RemoveAll(cfg.Dir)
		}
	}()
	j, err := d.prepare(cfg)
	if err != nil {
		return nil, err
	}
	defer j.close()
	if cfg.Restore != "" {
		if j.l.state, err = openNoFollow(cfg.Restore, os.O_RDONLY); err != nil {
			j.release()
			return nil, fmt.Errorf("open saved state: %w", err)
		}
	}
	args, files := d.args(cfg, j.l)
	cmd, err := jail.Command(d.jailSpec(cfg, args), j.ids, files)
	if err == nil {
		cmd.Stdout, cmd.Stderr = j.errW, j.errW
		err = cmd.Start()
	}
	if err != nil {
		j.release()
		return nil, fmt.Errorf("start jailed qemu: %w", err)
	}
	// QEMU holds its own copies now; the copiers see EOF when it exits.
	j.handOver()
	j.close()
	pid := cmd.Process.Pid
	v := &instance{
		cfg:     cfg,
		pid:     pid,
		drv:     d,
		ids:     j.ids,
		cgroup:  j.cgroup,
		release: j.alloc.Put,
		signal:  cmd.Process.Signal,
		waitPID: func() error { return exitError(cfg.ID, cmd.Wait()) },
		exited:  make(chan struct{}),
	}
	v.copyOutput(j.consoleR, cfg.ConsoleLog, d.jail().ConsoleLimit, j.errR)
	go v.wait()
	// Confine it before it runs anything of QEMU's.
	err = j.cgroup.Add(pid)
	if err == nil {
		err = jail.SetOOMScoreAdj(pid, cfg.OOMScoreAdj)
	}
	if err == nil {
		err = writePidFile(cfg.Dir, pid)
	}
	if err != nil {
		cmd.Abort()
		<-v.exited
		return nil, fmt.Errorf("vm %s: confine qemu: %w", cfg.ID, err)
	}
	if err := cmd.Release(); err != nil {
		v.Kill()
		return nil, fmt.Errorf("vm %s: release jailed qemu: %w%s", cfg.ID, err, v.stderrSuffix())
	}
	klog.V(2).InfoS("qemu started", "vm", cfg.ID, "pid", pid, "uid", j.ids.UID, "accel", cfg.Accel)

	if err := v.waitQMP(ctx); err != nil {
		v.Kill()
		return nil, fmt.Errorf("vm %s: %w%s", cfg.ID, err, v.stderrSuffix())
	}
	if cfg.Restore != "" {
		if err := v.restore(ctx, stateFD(files)); err != nil {
			v.Kill()
			return nil, fmt.Errorf("vm %s: restore: %w%s", cfg.ID, err, v.stderrSuffix())
		}
	}
	return v, nil
}

// ignoreShared makes migration skip RAM in shared memory files: a template's
// RAM stays in its file, and the saved state holds only device state.
var ignoreShared = map[string]any{"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}}}

// restore loads a saved device state into a VM started with -incoming defer
// and resumes it.
func (v *instance) restore(ctx context.Context, stateFD string) error {
	if _, err := v.execute(ctx, "migrate-set-capabilities", ignoreShared); err != nil {
		return err
	}
	// The state is a file QEMU inherited: no exec: URI, which its seccomp
	// filter (spawn=deny) would refuse anyway.
	if _, err := v.execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:" + stateFD}); err != nil {
		return err
	}
	if err := v.waitMigration(ctx); err != nil {
		return err
	}
	// The template was paused when saved, so its clone starts paused.
	_, err := v.execute(ctx, "cont", nil)
	return err
}

// Save pauses the VM and writes its device state to path; see vm.Saver.
func (v *instance) Save(ctx context.Context, path string) error {
	if v.cfg.Memory == nil || !v.cfg.Memory.Shared {
		return fmt.Errorf("save vm %s: its RAM is not a shared memory file", v.cfg.ID)
	}
	f, err := openNoFollow(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
	if err != nil {
		return fmt.Errorf("save vm %s: %w", v.cfg.ID, err)
	}
	defer f.Close()
	err = v.session(ctx, func(q *qmp) error {
		for _, c := range []struct {
			cmd  string
			args any
			fd   *os.File
		}{
			{"stop", nil, nil},
			{"migrate-set-capabilities", ignoreShared, nil},
			// The state file goes to QEMU over the QMP socket.
			{"getfd", map[string]any{"fdname": "state"}, f},
			{"migrate", map[string]any{"uri": "fd:state"}, nil},
		} {
			if _, err := q.executeFD(ctx, c.cmd, c.args, c.fd); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("save vm %s: %w", v.cfg.ID, err)
	}
	if err := v.waitMigration(ctx); err != nil {
		return fmt.Errorf("save vm %s: %w", v.cfg.ID, err)
	}
	return nil
}

// waitMigration polls until the migration in either direction completed.
func (v *instance) waitMigration(ctx context.Context) error {
	for {
		raw, err := v.execute(ctx, "query-migrate", nil)
		if err != nil {
			return err
		}
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := json.Unmarshal(raw, &st); err != nil {
			return fmt.Errorf("query-migrate: %w", err)
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", st.Status, st.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("migration %s: %w", st.Status, ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// instance is one QEMU process, started by this process or attached to
// after a daemon restart.
type instance struct {
	cfg     vm.Config
	pid     int
	signal  func(os.Signal) error
	waitPID func() error // blocks until QEMU exits; nil error for a clean exit

	drv     *Driver
	ids     jail.IDs
	cgroup  *jail.Cgroup
	release func(jail.IDs)
	output  sync.WaitGroup // the console and stderr copiers

	mu         sync.Mutex
	nextTarget int
	stopping   bool

	exited  chan struct{}
	exitErr error
	stderr  string
}

var (
	_ vm.VM     = (*instance)(nil)
	_ vm.Saver  = (*instance)(nil)
	_ vm.Pauser = (*instance)(nil)
)

// Pause stops the VM's vCPUs (QMP stop); see vm.Pauser.
func (v *instance) Pause(ctx context.Context) error {
	if _, err := v.execute(ctx, "stop", nil); err != nil {
		return fmt.Errorf("pause vm %s: %w", v.cfg.ID, err)
	}
	return nil
}

// Resume starts the VM's vCPUs again (QMP cont).
func (v *instance) Resume(ctx context.Context) error {
	if _, err := v.execute(ctx, "cont", nil); err != nil {
		return fmt.Errorf("resume vm %s: %w", v.cfg.ID, err)
	}
	return nil
}

func (v *instance) ID() string          { return v.cfg.ID }
func (v *instance) PID() int            { return v.pid }
func (v *instance) AgentSocket() string { return filepath.Join(v.cfg.Dir, agentSock) }
func (v *instance) ConsoleLog() string  { return v.cfg.ConsoleLog }
func (v *instance) Exited() <-chan struct{} {
	return v.exited
}

// wait reaps QEMU and removes everything the VM had on disk, however it ended.
func (v *instance) wait() {
	err := v.waitPID()
	v.output.Wait()
	v.stderr = readTail(filepath.Join(v.cfg.Dir, errFile), 2048)
	v.mu.Lock()
	stopping := v.stopping
	v.mu.Unlock()
	var ee *vm.ExitError
	if errors.As(err, &ee) && !stopping {
		ee.Stderr = v.stderr
		v.exitErr = ee
	}
	if rmErr := os.RemoveAll(v.cfg.Dir); rmErr != nil {
		klog.ErrorS(rmErr, "remove vm dir", "vm", v.cfg.ID)
	}
	v.mu.Lock()
	cg := v.cgroup
	v.mu.Unlock()
	if cg != nil {
		if cgErr := cg.Remove(); cgErr != nil {
			klog.ErrorS(cgErr, "remove vm cgroup", "vm", v.cfg.ID)
		}
	}
	if v.release != nil {
		v.release(v.ids)
	}
	klog.V(2).InfoS("qemu exited", "vm", v.cfg.ID, "err", err)
	close(v.exited)
}

// exitError turns cmd.Wait's result into a vm.ExitError (nil for exit 0).
func exitError(id string, err error) error {
	if err == nil {
		return nil
	}
	reason := err.Error()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		reason = "exit status " + strconv.Itoa(ee.ExitCode())
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			reason = "killed by signal " + strconv.Itoa(int(ws.Signal()))
		}
	}
	return &vm.ExitError{ID: id, Reason: reason}
}

func (v *instance) stderrSuffix() string {
	s := v.stderr
	if s == "" {
		s = readTail(filepath.Join(v.cfg.Dir, errFile), 2048)
	}
	if s == "" {
		return ""
	}
	return ": qemu: " + s
}

// waitQMP waits until QEMU answers on its QMP socket.
func (v *instance) waitQMP(ctx context.Context) error {
	path := filepath.Join(v.cfg.Dir, qmpSock)
	ctx, cancel := v.aliveContext(ctx)
	defer cancel()
	for {
		q, err := dialQMP(ctx, path)
		if err == nil {
			return q.close()
		}
		select {
		case <-v.exited:
			return errors.New("qemu exited during start")
		case <-ctx.Done():
			return fmt.Errorf("connect qmp: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// aliveContext is ctx, also cancelled when QEMU exits.
func (v *instance) aliveContext(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-v.exited:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// execute runs one QMP command on a connection of its own: QMP serves one
// client at a time, and nothing stays connected that a daemon restart would
// have to undo.
func (v *instance) execute(ctx context.Context, cmd string, args any) (ret json.RawMessage, err error) {
	err = v.session(ctx, func(q *qmp) error {
		ret, err = q.execute(ctx, cmd, args)
		return err
	})
	return ret, err
}

// qmpTimeout bounds one QMP session: a QEMU that stopped answering
// (wedged, or SIGSTOPped) must not hold its caller.
const qmpTimeout = 30 * time.Second

// session runs fn on one QMP connection, within qmpTimeout.
func (v *instance) session(ctx context.Context, fn func(q *qmp) error) error {
	select {
	case <-v.exited:
		return fmt.Errorf("vm %s: %w", v.cfg.ID, vm.ErrNotRunning)
	default:
	}
	ctx, cancel := v.aliveContext(ctx)
	defer cancel()
	ctx, cancelTimeout := context.WithTimeout(ctx, qmpTimeout)
	defer cancelTimeout()
	q, err := dialQMP(ctx, filepath.Join(v.cfg.Dir, qmpSock))
	if err != nil {
		return err
	}
	defer q.close()
	return fn(q)
}

// AddDisk attaches a file as a SCSI disk on the VM's virtio-scsi controller.
func (v *instance) AddDisk(ctx context.Context, d vm.Disk) (vm.DiskAddr, error) {
	if d.ID == "" || d.Path == "" {
		return vm.DiskAddr{}, errors.New("add disk: ID and Path are required")
	}
	v.mu.Lock()
	target := v.nextTarget
	v.nextTarget++
	v.mu.Unlock()
	node := "disk" + strconv.Itoa(target)
	// QEMU cannot open host paths: the disk goes to it as an fd, in an fd
	// set of its own.
	flag := os.O_RDWR
	if d.ReadOnly {
		flag = os.O_RDONLY
	}
	f, err := openNoFollow(d.Path, flag)
	if err != nil {
		return vm.DiskAddr{}, fmt.Errorf("add disk %s: %w", d.ID, err)
	}
	defer f.Close()
	fdset := 100 + target
	blk := map[string]any{
		"node-name": node,
		"driver":    "raw",
		"read-only": d.ReadOnly,
		"file": map[string]any{
			"driver":    "file",
			"filename":  "/dev/fdset/" + strconv.Itoa(fdset),
			"read-only": d.ReadOnly,
		},
	}
	// One connection for both: QEMU drops an fd set nothing uses yet when
	// its last QMP client disconnects.
	err = v.session(ctx, func(q *qmp) error {
		if _, err := q.executeFD(ctx, "add-fd", map[string]any{"fdset-id": fdset, "opaque": d.ID}, f); err != nil {
			return err
		}
		_, err := q.execute(ctx, "blockdev-add", blk)
		return err
	})
	if err != nil {
		return vm.DiskAddr{}, fmt.Errorf("add disk %s: %w", d.ID, err)
	}
	dev := map[string]any{
		"driver":  "scsi-hd",
		"id":      node + "-dev",
		"bus":     "scsi0.0",
		"drive":   node,
		"scsi-id": target,
		"lun":     0,
		"serial":  d.ID,
	}
	if _, err := v.execute(ctx, "device_add", dev); err != nil {
		v.execute(context.Background(), "blockdev-del", map[string]any{"node-name": node})
		return vm.DiskAddr{}, fmt.Errorf("add disk %s: %w", d.ID, err)
	}
	return vm.DiskAddr{Target: target, LUN: 0}, nil
}

// Stop asks QEMU to quit and kills it if it has not by ctx's deadline.
func (v *instance) Stop(ctx context.Context) error {
	v.mu.Lock()
	v.stopping = true
	v.mu.Unlock()
	if _, err := v.execute(ctx, "quit", nil); err != nil {
		klog.V(2).InfoS("qmp quit failed; killing", "vm", v.cfg.ID, "err", err)
		return v.Kill()
	}
	select {
	case <-v.exited:
		return nil
	case <-ctx.Done():
		return v.Kill()
	}
}

// Kill sends SIGKILL to QEMU and waits until it is reaped and cleaned up.
func (v *instance) Kill() error {
	v.mu.Lock()
	v.stopping = true
	v.mu.Unlock()
	if err := v.signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill vm %s: %w", v.cfg.ID, err)
	}
	<-v.exited
	return nil
}

func (v *instance) Wait(ctx context.Context) error {
	select {
	case <-v.exited:
		return v.exitErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// readTail returns up to n trailing bytes of a file, trimmed.
func readTail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(st.Size()-n, 0)
	buf := make([]byte, st.Size()-off)
	f.ReadAt(buf, off)
	return strings.TrimSpace(string(buf))
}
