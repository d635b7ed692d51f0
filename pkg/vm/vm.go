// Package vm defines what hyperlet needs from a hypervisor: boot a micro-VM
// from a kernel and initrd, give it a console log and an agent channel, hot-add
// disks, and stop it. Drivers live in subpackages (qemu).
package vm

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
)

// Accel selects CPU virtualisation.
type Accel string

const (
	// AccelAuto uses KVM if a probe boot of the guest succeeds under it, TCG otherwise.
	AccelAuto Accel = "auto"
	AccelKVM  Accel = "kvm"
	AccelTCG  Accel = "tcg"
)

// ParseAccel validates an accelerator name ("" means auto).
func ParseAccel(s string) (Accel, error) {
	switch a := Accel(s); a {
	case "":
		return AccelAuto, nil
	case AccelAuto, AccelKVM, AccelTCG:
		return a, nil
	}
	return "", fmt.Errorf("unknown accelerator %q (want auto, kvm or tcg)", s)
}

// Config describes one VM.
type Config struct {
	// ID names the VM; it must be unique among running VMs.
	ID string
	// Dir is a directory the VM owns while it runs (sockets, pid file). It
	// is removed when the VM stops.
	Dir string
	// ConsoleLog receives the guest's serial console. It belongs to the
	// caller and outlives the VM.
	ConsoleLog string

	Kernel     string
	Initrd     string
	KernelArgs []string // appended to the driver's defaults

	VCPUs     int
	MemoryMiB int

	// SharedDir, if set, is a host directory the guest mounts over
	// virtio-9p (the pod's volumes).
	SharedDir string

	// Net, if set, gives the VM a NIC on a tap device.
	Net *NetDevice

	// Memory, if set, backs guest RAM with a file instead of anonymous
	// memory: shared for a template being built, private for its clones.
	Memory *MemoryFile `json:",omitempty"`
	// Restore, if set, is a device state written by Saver.Save: the VM
	// resumes from it instead of booting. Memory must then be the RAM file
	// saved with it, mapped private, and every other field must match the
	// saved VM's except ID, Dir, ConsoleLog, SharedDir's path and the tap.
	Restore string `json:",omitempty"`

	// Accel must be AccelKVM or AccelTCG; resolve AccelAuto with a probe first.
	Accel Accel

	// CgroupParent is the cgroup the VM's cgroup is made in (the pod's, as
	// kubelet sends it: cgroupfs or systemd style); empty for the driver's
	// default.
	CgroupParent string `json:",omitempty"`
	// OOMScoreAdj is the hypervisor process's oom_score_adj.
	OOMScoreAdj int `json:",omitempty"`
}

// Validate checks a Config before anything is started.
func (c *Config) Validate() error {
	switch {
	case c.ID == "":
		return errors.New("vm config: empty ID")
	case c.Dir == "":
		return errors.New("vm config: empty Dir")
	case c.Kernel == "" || c.Initrd == "":
		return errors.New("vm config: kernel and initrd are required")
	case c.VCPUs < 1 || c.VCPUs > 64:
		return fmt.Errorf("vm config: %d vCPUs out of range 1-64", c.VCPUs)
	case c.MemoryMiB < 64:
		return fmt.Errorf("vm config: %d MiB memory is below 64 MiB", c.MemoryMiB)
	case c.Accel != AccelKVM && c.Accel != AccelTCG:
		return fmt.Errorf("vm config: accelerator %q must be resolved to kvm or tcg", c.Accel)
	case c.Memory != nil && c.Memory.File == nil:
		return errors.New("vm config: memory file not open")
	case c.Restore != "" && (c.Memory == nil || c.Memory.Shared):
		return errors.New("vm config: restoring needs the saved RAM file, mapped private")
	}
	return nil
}

// MemoryFile is a file that holds a VM's RAM: a memfd, sealed against
// writes for clones, so that no VM can change what another maps.
type MemoryFile struct {
	// Path names where the RAM is kept (for logs); File is what the VM
	// maps.
	Path string
	File *os.File `json:"-"`
	// Shared maps the file shared, so the guest's writes reach it (a
	// template being built). Otherwise it is mapped private, copy-on-write:
	// clones of one template share every page none of them wrote.
	Shared bool
}

// NetDevice is a NIC backed by an open tap queue. A NIC without a tap is
// connected to nothing (a template's NIC: its clones get taps).
type NetDevice struct {
	Tap *os.File `json:"-"` // only needed to start the VM
	MAC string
}

// RandomMAC returns a random locally administered unicast MAC address.
func RandomMAC() string {
	b := make([]byte, 6)
	rand.Read(b)
	b[0] = b[0]&^1 | 2
	return net.HardwareAddr(b).String()
}

// Disk is a host file attached to a running VM.

type Disk struct {
	ID       string
	Path     string
	ReadOnly bool
}

// DiskAddr says where a hot-added disk appears in the guest: the SCSI
// target and LUN on the VM's only virtio-scsi controller.
type DiskAddr struct {
	Target, LUN int
}

// Hypervisor starts VMs.
type Hypervisor interface {
	// Start boots a VM. The VM is running (not necessarily agent-ready)
	// when Start returns; on error nothing is left behind.
	Start(ctx context.Context, cfg Config) (VM, error)
	// Attach takes over a VM started earlier (by a daemon since
	// restarted), from cfg as it was at Start. A VM that is gone wraps
	// ErrNotRunning, and its leftover directory is removed.
	Attach(ctx context.Context, cfg Config) (VM, error)
	// Sweep stops every VM whose directory lies under root and whose ID
	// keep rejects, and removes what each left on the host (directory,
	// cgroup): the VMs of a daemon killed before any record named them.
	// It returns the IDs it removed.
	Sweep(ctx context.Context, root string, keep func(id string) bool) ([]string, error)
}

// VM is one running micro-VM.
type VM interface {
	ID() string
	// PID is the host process backing the VM.
	PID() int
	// AgentSocket is the unix socket connected to the guest agent's port.
	AgentSocket() string
	// ConsoleLog is the path of the serial console log.
	ConsoleLog() string
	// AddDisk attaches a disk to the running VM.
	AddDisk(ctx context.Context, d Disk) (DiskAddr, error)
	// Stop ends the VM: it asks the hypervisor to quit and kills it if it
	// does not within the context's deadline. The guest is not asked to shut
	// down first; callers that can, should (agent Shutdown).
	Stop(ctx context.Context) error
	// Kill ends the VM at once.
	Kill() error
	// Wait blocks until the VM has exited and its files are removed. It
	// returns nil for a clean guest shutdown and an ExitError otherwise.
	Wait(ctx context.Context) error
	// Exited is closed once the VM has exited and is cleaned up.
	Exited() <-chan struct{}
}

// Saver is a VM whose state can be saved for clones to resume from.
type Saver interface {
	// Save pauses the VM for good and writes its device state to path. Its
	// RAM must be a shared Memory file, which then holds the RAM to go
	// with the state. The caller stops the VM afterwards.
	Save(ctx context.Context, path string) error
}

// Pauser is a VM whose vCPUs can be stopped and started again: a paused
// VM keeps its memory and devices but runs nothing.
type Pauser interface {
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
}

// Confiner is a VM whose host process can move to another cgroup parent
// (a warm VM adopted by a pod).
type Confiner interface {
	Confine(cgroupParent string, oomScoreAdj int) error
}

// ErrNotRunning is returned for operations on a VM that has exited.
var ErrNotRunning = errors.New("vm not running")

// ExitError describes a VM that ended other than by a guest shutdown.
type ExitError struct {
	ID     string
	Reason string // e.g. "killed by signal 9"
	Stderr string // tail of the hypervisor's error output
}

func (e *ExitError) Error() string {
	s := fmt.Sprintf("vm %s exited: %s", e.ID, e.Reason)
	if e.Stderr != "" {
		s += ": " + e.Stderr
	}
	return s
}
