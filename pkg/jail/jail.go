// Package jail confines a VMM process the way Firecracker's jailer does,
// treating it as compromised: its own user namespace mapped to an
// unprivileged host uid/gid range, its own mount namespace pivoted into a
// tmpfs that holds only what it needs (read-only where it can), its own PID
// namespace, a cgroup with memory and pids limits, its own oom_score_adj and
// RLIMIT_NOFILE, no capabilities, no_new_privs, then exec.
//
// The confinement is applied by a short-lived helper: the daemon's own
// binary re-executed as "hyperlet-jail" (see Init), which execs the VMM in
// place, so the VMM keeps the helper's pid and is the daemon's child.
package jail

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
)

// helperName is argv[0] of the re-executed helper.
const helperName = "hyperlet-jail"

// IDsPerVM is the size of each VM's uid and gid range: the guest-visible
// ids 0-65535 of the files it shares map onto it.
const IDsPerVM = 65536

// Spec says what the helper builds before it execs Args.
type Spec struct {
	// Root is an empty host directory the jail's root tmpfs is mounted on
	// (in the jail's mount namespace only: the host sees it empty).
	Root string
	// Binds are host paths made visible in the jail.
	Binds []Bind
	// Symlinks are created in the jail: link name -> target.
	Symlinks map[string]string
	// NoFile is RLIMIT_NOFILE for the VMM (0: inherit).
	NoFile uint64
	// Args is the VMM's command line; Args[0] is its path in the jail.
	Args []string
	// SyncFD is the helper's fd on which it waits for the daemon to have
	// placed it in its cgroup (set by Command).
	SyncFD int
}

// Bind makes Source visible at Target (a path inside the jail).
type Bind struct {
	Source, Target string
	ReadOnly       bool
	// Recursive binds submounts too; Source is then a directory whose
	// mount events from the host keep propagating in (slave).
	Recursive bool
}

// IDs is the host uid and gid range a jailed process runs as; the jail's
// uid and gid 0 is its first id.
type IDs struct {
	UID, GID uint32
}

// Cmd is a helper started but held before it execs the VMM.
type Cmd struct {
	*exec.Cmd
	sync *os.File
}

// Command prepares the helper for spec. files become the VMM's fds 3, 4...
// in order. Stdout and Stderr are the caller's to set.
func Command(spec Spec, ids IDs, files []*os.File) (*Cmd, error) {
	if len(spec.Args) == 0 || spec.Root == "" {
		return nil, errors.New("jail: empty command or root")
	}
	if ids.UID == 0 || ids.GID == 0 {
		return nil, errors.New("jail: refusing host uid or gid 0")
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	spec.SyncFD = 3 + len(files)
	b, err := json.Marshal(spec)
	if err != nil {
		r.Close()
		w.Close()
		return nil, err
	}
	cmd := &exec.Cmd{
		Path:       "/proc/self/exe",
		Args:       []string{helperName, string(b)},
		Env:        []string{},
		ExtraFiles: append(append([]*os.File{}, files...), r),
		SysProcAttr: &syscall.SysProcAttr{
			// Its own session: a VM outlives the daemon that started it,
			// and signals sent to the daemon's process group miss it.
			Setsid:      true,
			Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS | syscall.CLONE_NEWPID,
			UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(ids.UID), Size: IDsPerVM}},
			GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(ids.GID), Size: IDsPerVM}},
			// Drop the daemon's supplementary groups (host root's), which
			// would otherwise still grant group access on the host.
			GidMappingsEnableSetgroups: true,
			Credential:                 &syscall.Credential{Uid: 0, Gid: 0, Groups: []uint32{}},
		},
	}
	return &Cmd{Cmd: cmd, sync: w}, nil
}

// Start starts the helper and holds it until Release.
func (c *Cmd) Start() error {
	err := c.Cmd.Start()
	// The child has its copy of the read end.
	c.ExtraFiles[len(c.ExtraFiles)-1].Close()
	if err != nil {
		c.sync.Close()
	}
	return err
}

// Release lets a started helper go on to exec the VMM.
func (c *Cmd) Release() error {
	defer c.sync.Close()
	_, err := c.sync.Write([]byte{1})
	return err
}

// Abort makes a held helper exit without running the VMM.
func (c *Cmd) Abort() {
	c.sync.Close()
}

// SetOOMScoreAdj sets a process's oom_score_adj.
func SetOOMScoreAdj(pid, adj int) error {
	if adj < -1000 || adj > 1000 {
		return fmt.Errorf("oom_score_adj %d out of range", adj)
	}
	return os.WriteFile("/proc/"+strconv.Itoa(pid)+"/oom_score_adj", []byte(strconv.Itoa(adj)), 0)
}
