package qemu

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/hyperlet/hyperlet/pkg/jail"
	"github.com/hyperlet/hyperlet/pkg/vm"
)

// JailOptions bound and confine every QEMU the driver starts.
type JailOptions struct {
	// IDs hands out each VM's unprivileged uid/gid range; DefaultIDs if nil.
	IDs *jail.Allocator
	// CgroupParent holds the cgroups of VMs whose config names none
	// (warm VMs, template builds); "hyperlet" if empty.
	CgroupParent string
	// MemoryOverheadMiB is added to guest RAM for the VM's cgroup memory
	// limit (QEMU itself, TCG's cache, I/O buffers); 256 if 0.
	MemoryOverheadMiB int
	// Pids is the VM cgroup's pids limit (QEMU's threads); 512 if 0.
	Pids int64
	// NoFile is QEMU's RLIMIT_NOFILE; 4096 if 0.
	NoFile uint64
	// ConsoleLimit caps a VM's console log in bytes; 1 MiB if 0. Output
	// beyond it is dropped.
	ConsoleLimit int64
}

// DefaultIDs is the uid/gid range of VMs started by a driver without its
// own: 1024 VMs from uid 2000000000.
var DefaultIDs = func() *jail.Allocator {
	a, err := jail.NewAllocator(2_000_000_000, 1024)
	if err != nil {
		panic(err)
	}
	return a
}()

// stderrLimit caps QEMU's own error output kept in the VM directory.
const stderrLimit = 64 << 10

func (d *Driver) jail() JailOptions {
	o := d.Jail
	if o.IDs == nil {
		o.IDs = DefaultIDs
	}
	if o.CgroupParent == "" {
		o.CgroupParent = "hyperlet"
	}
	if o.MemoryOverheadMiB <= 0 {
		o.MemoryOverheadMiB = 256
	}
	if o.Pids <= 0 {
		o.Pids = 512
	}
	if o.NoFile == 0 {
		o.NoFile = 4096
	}
	if o.ConsoleLimit <= 0 {
		o.ConsoleLimit = 1 << 20
	}
	return o
}

// cgroupPath is where the VM's cgroup lives, relative to a hierarchy root.
func (d *Driver) cgroupPath(cfg vm.Config) (string, error) {
	parent := cfg.CgroupParent
	if parent == "" {
		parent = d.jail().CgroupParent
	}
	return jail.CgroupPath(parent, "hyperlet-vm-"+cfg.ID)
}

// limits bound a VM's cgroup: its RAM plus QEMU's overhead, and QEMU's
// threads.
func (d *Driver) limits(cfg vm.Config) jail.Limits {
	o := d.jail()
	return jail.Limits{MemoryBytes: int64(cfg.MemoryMiB+o.MemoryOverheadMiB) << 20, Pids: o.Pids}
}

// prepared holds what one start sets up before QEMU runs.
type prepared struct {
	l        launch
	ids      jail.IDs
	cgroup   *jail.Cgroup
	consoleR *os.File
	errR     *os.File
	errW     *os.File
	alloc    *jail.Allocator
	handed   bool
}

// prepare makes the VM's uid range, cgroup, sockets and output pipes.
func (d *Driver) prepare(cfg vm.Config) (_ *prepared, retErr error) {
	o := d.jail()
	for _, f := range []string{cfg.Kernel, cfg.Initrd} {
		st, err := os.Stat(f)
		if err != nil {
			return nil, fmt.Errorf("guest image: %w", err)
		}
		if st.Mode().Perm()&0o004 == 0 {
			return nil, fmt.Errorf("guest image %s must be world-readable: QEMU runs unprivileged", f)
		}
	}
	for _, d := range []string{cfg.Dir, cfg.SharedDir} {
		if d == "" {
			continue
		}
		if err := reachable(d); err != nil {
			return nil, err
		}
	}
	p := &prepared{alloc: o.IDs}
	defer func() {
		if retErr != nil {
			p.close()
			p.release()
		}
	}()
	ids, err := getFreeIDs(o.IDs)
	if err != nil {
		return nil, fmt.Errorf("vm %s: %w", cfg.ID, err)
	}
	p.ids = ids
	rel, err := d.cgroupPath(cfg)
	if err != nil {
		return nil, err
	}
	p.cgroup, err = jail.NewCgroup(rel, d.limits(cfg))
	if err != nil {
		return nil, fmt.Errorf("vm %s: %w", cfg.ID, err)
	}
	if err := os.Mkdir(filepath.Join(cfg.Dir, jailRoot), 0o755); err != nil {
		return nil, err
	}
	if p.l.qmp, err = listenFile(filepath.Join(cfg.Dir, qmpSock)); err != nil {
		return nil, err
	}
	if p.l.agent, err = listenFile(filepath.Join(cfg.Dir, agentSock)); err != nil {
		return nil, err
	}
	fifo := filepath.Join(cfg.Dir, consoleFIFO)
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		return nil, fmt.Errorf("console fifo: %w", err)
	}
	if p.consoleR, err = openNoFollow(fifo, os.O_RDONLY|unix.O_NONBLOCK); err != nil {
		return nil, err
	}
	if p.l.console, err = openNoFollow(fifo, os.O_WRONLY); err != nil {
		return nil, err
	}
	// QEMU also holds a read end it never reads: with the daemon gone (a
	// restart), its console writes then fill the pipe and wait instead of
	// failing with EPIPE, which QEMU 7.2 retries in a busy loop. The pipe
	// holds 1 MiB meanwhile; the next daemon drains it.
	if p.l.consoleKeep, err = openNoFollow(fifo, os.O_RDONLY|unix.O_NONBLOCK); err != nil {
		return nil, err
	}
	unix.FcntlInt(p.consoleR.Fd(), unix.F_SETPIPE_SZ, 1<<20)
	if p.errR, p.errW, err = os.Pipe(); err != nil {
		return nil, err
	}
	return p, nil
}

// reachable checks that the jail helper, an unprivileged uid, can reach
// path: every directory above it must be searchable by others.
func reachable(path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	for d := filepath.Dir(abs); ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return err
		}
		if st.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("%s (mode %o) must be searchable by others (o+x): QEMU runs as an unprivileged uid below it", d, st.Mode().Perm())
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

// release undoes prepare's cgroup and uid range when no QEMU started.
func (p *prepared) release() {
	if p.cgroup != nil {
		p.cgroup.Remove()
	}
	if p.ids.UID != 0 {
		p.alloc.Put(p.ids)
	}
}

// handOver marks the read ends as the copiers'.
func (p *prepared) handOver() { p.handed = true }

// close drops the daemon's copies of what QEMU inherited.
func (p *prepared) close() {
	for _, f := range []*os.File{p.l.qmp, p.l.agent, p.l.console, p.l.consoleKeep, p.l.state, p.errW} {
		if f != nil {
			f.Close()
		}
	}
	if !p.handed {
		for _, f := range []*os.File{p.consoleR, p.errR} {
			if f != nil {
				f.Close()
			}
		}
	}
}

// getFreeIDs takes a range no process on the host runs as (another
// daemon's VMs included).
func getFreeIDs(a *jail.Allocator) (jail.IDs, error) {
	inUse := map[uint32]bool{}
	if ents, err := os.ReadDir("/proc"); err == nil {
		for _, e := range ents {
			if pid, err := strconv.Atoi(e.Name()); err == nil {
				if ids, err := jail.ProcessIDs(pid); err == nil {
					inUse[ids.UID] = true
				}
			}
		}
	}
	var taken []jail.IDs
	defer func() {
		for _, t := range taken {
			a.Put(t)
		}
	}()
	for {
		ids, err := a.Get()
		if err != nil {
			return ids, err
		}
		if !inUse[ids.UID] {
			return ids, nil
		}
		taken = append(taken, ids)
	}
}

// listenFile makes a listening unix socket at path, owned by the daemon,
// and returns it as a file for QEMU to accept on.
func listenFile(path string) (*os.File, error) {
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	l.SetUnlinkOnClose(false)
	defer l.Close()
	return l.File()
}

// openNoFollow opens path without following a symlink in its last element.
func openNoFollow(path string, flag int) (*os.File, error) {
	return os.OpenFile(path, flag|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
}

func writePidFile(dir string, pid int) error {
	return os.WriteFile(filepath.Join(dir, pidFile), []byte(strconv.Itoa(pid)+"\n"), 0o600)
}

// jailSpec lists what QEMU sees: the system's /usr (its binary, libraries
// and firmware), a few device nodes, the guest kernel and initrd, and the
// pod's shared directory. Nothing else of the host.
func (d *Driver) jailSpec(cfg vm.Config, args []string) jail.Spec {
	bin := d.Binary
	if bin == "" {
		bin = DefaultBinary
	}
	if p, err := exec.LookPath(bin); err == nil {
		bin = p
	}
	if abs, err := filepath.EvalSymlinks(bin); err == nil {
		bin = abs
	}
	spec := jail.Spec{
		Root: filepath.Join(cfg.Dir, jailRoot),
		Binds: []jail.Bind{
			{Source: "/usr", Target: "/usr", ReadOnly: true},
			{Source: "/dev/null", Target: "/dev/null"},
			{Source: "/dev/zero", Target: "/dev/zero"},
			{Source: "/dev/urandom", Target: "/dev/urandom"},
			{Source: "/dev/random", Target: "/dev/random"},
			{Source: cfg.Kernel, Target: jailKernel, ReadOnly: true},
			{Source: cfg.Initrd, Target: jailInitrd, ReadOnly: true},
		},
		Symlinks: map[string]string{"/bin": "usr/bin", "/sbin": "usr/sbin", "/lib": "usr/lib", "/lib64": "usr/lib64"},
		NoFile:   d.jail().NoFile,
	}
	if _, err := os.Stat("/etc/ld.so.cache"); err == nil {
		spec.Binds = append(spec.Binds, jail.Bind{Source: "/etc/ld.so.cache", Target: "/etc/ld.so.cache", ReadOnly: true})
	}
	if cfg.Accel == vm.AccelKVM {
		spec.Binds = append(spec.Binds, jail.Bind{Source: "/dev/kvm", Target: "/dev/kvm"})
	}
	if cfg.SharedDir != "" {
		spec.Binds = append(spec.Binds, jail.Bind{Source: cfg.SharedDir, Target: jailShare, Recursive: true})
	}
	if !strings.HasPrefix(bin, "/usr/") {
		spec.Binds = append(spec.Binds, jail.Bind{Source: bin, Target: jailQEMU, ReadOnly: true})
		bin = jailQEMU
	}
	spec.Args = append([]string{bin}, args...)
	return spec
}

// copyOutput copies the console into its log up to the cap, and QEMU's
// stderr (nil after a restart) into the VM directory.
func (v *instance) copyOutput(console *os.File, log string, limit int64, stderr *os.File) {
	v.copyCapped(console, log, os.O_APPEND, 0o640, limit)
	if stderr != nil {
		v.copyCapped(stderr, filepath.Join(v.cfg.Dir, errFile), os.O_TRUNC, 0o600, stderrLimit)
	}
}

// copyCapped copies r, until it ends, into path (opened with flag, never
// through a symlink) up to limit bytes, and drops the rest.
func (v *instance) copyCapped(r *os.File, path string, flag int, mode os.FileMode, limit int64) {
	v.output.Add(1)
	go func() {
		defer v.output.Done()
		defer r.Close()
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|flag|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
		if err != nil {
			klog.ErrorS(err, "open VM output log", "vm", v.cfg.ID)
			io.Copy(io.Discard, r)
			return
		}
		defer f.Close()
		cappedCopy(f, r, limit)
	}()
}

// cappedCopy copies r to f until f holds limit bytes, then drops the rest.
func cappedCopy(f *os.File, r io.Reader, limit int64) {
	var have int64
	if st, err := f.Stat(); err == nil {
		have = st.Size()
	}
	if room := limit - have; room > 0 {
		n, err := io.CopyN(f, r, room)
		if err != nil || n < room {
			return
		}
	}
	io.Copy(io.Discard, r)
}

var errNotJailed = errors.New("vm was not started jailed")

// reserveAttached records the uid range of a VM taken over after a restart,
// and resumes copying its console.
func (d *Driver) reserveAttached(v *instance) error {
	ids, err := jail.ProcessIDs(v.pid)
	if err != nil {
		return err
	}
	o := d.jail()
	if ids.UID == 0 || !o.IDs.Reserve(ids) {
		klog.InfoS("VM runs outside hyperlet's uid range; not confined", "vm", v.cfg.ID, "uid", ids.UID)
		return errNotJailed
	}
	v.ids, v.release = ids, o.IDs.Put
	if rel, err := d.cgroupPath(v.cfg); err == nil {
		v.cgroup = jail.OpenCgroup(rel)
	}
	if r, err := openNoFollow(filepath.Join(v.cfg.Dir, consoleFIFO), os.O_RDONLY|unix.O_NONBLOCK); err == nil {
		v.copyOutput(r, v.cfg.ConsoleLog, o.ConsoleLimit, nil)
	}
	return nil
}

var _ vm.Confiner = (*instance)(nil)

// Confine moves QEMU into a cgroup under parent (with the same limits) and
// sets its oom_score_adj.
func (v *instance) Confine(parent string, oomScoreAdj int) error {
	if v.cgroup == nil || v.drv == nil {
		return errNotJailed
	}
	v.mu.Lock()
	cfg := v.cfg
	v.mu.Unlock()
	cur, err := v.drv.cgroupPath(cfg)
	if err != nil {
		return err
	}
	cfg.CgroupParent = parent
	rel, err := v.drv.cgroupPath(cfg)
	if err != nil {
		return err
	}
	if rel == cur {
		// A pod without a cgroup parent: the VM stays where it is.
		return jail.SetOOMScoreAdj(v.pid, oomScoreAdj)
	}
	cg, err := jail.NewCgroup(rel, v.drv.limits(cfg))
	if err != nil {
		return err
	}
	if err := cg.Add(v.pid); err != nil {
		cg.Remove()
		return err
	}
	v.mu.Lock()
	old := v.cgroup
	v.cgroup, v.cfg.CgroupParent = cg, parent
	v.mu.Unlock()
	// A cgroup v1 just emptied by a move stays busy for a while: remove it
	// without holding up the pod's start.
	go func() {
		for i := 0; i < 30; i++ {
			if err := old.Remove(); err == nil {
				return
			}
			time.Sleep(time.Second)
		}
		klog.InfoS("warm VM's old cgroup still busy; left", "dirs", old.Dirs)
	}()
	return jail.SetOOMScoreAdj(v.pid, oomScoreAdj)
}
