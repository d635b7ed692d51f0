package sandbox

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// VMUsage is what a pod's VM costs the host: its QEMU's CPU time and
// memory, and the traffic of the pod's network interfaces.
type VMUsage struct {
	CPUNanos       uint64
	RSSBytes       uint64
	PSSBytes       uint64
	Interfaces     []InterfaceUsage
	PodNetworkSeen bool // the pod's network namespace was read
}

// InterfaceUsage is one network interface's counters.
type InterfaceUsage struct {
	Name                                     string
	RxBytes, TxBytes, RxPackets, TxPackets   uint64
	RxErrors, TxErrors, RxDropped, TxDropped uint64
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times (100 on Linux).
const clockTicks = 100

// VMCPUNanos is the host CPU time the pod's VM has used.
func (p *Pod) VMCPUNanos() (uint64, error) {
	pid := p.VMPID()
	if pid <= 0 {
		return 0, fmt.Errorf("pod %s has no VM: %w", p.ID(), ErrNotReady)
	}
	return procCPUNanos(pid)
}

func procCPUNanos(pid int) (uint64, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command may hold spaces and parentheses: fields follow the last ')'.
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	utime, _ := strconv.ParseUint(f[11], 10, 64)
	stime, _ := strconv.ParseUint(f[12], 10, 64)
	return (utime + stime) * (1e9 / clockTicks), nil
}

// VMUsage reads the host's view of a pod's VM. It never waits on the
// guest.
func (p *Pod) VMUsage() (VMUsage, error) {
	var u VMUsage
	pid := p.VMPID()
	if pid <= 0 {
		return u, fmt.Errorf("pod %s has no VM: %w", p.ID(), ErrNotReady)
	}
	var err error
	if u.CPUNanos, err = procCPUNanos(pid); err != nil {
		return u, err
	}
	if r, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid)); err == nil {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			k, v, _ := strings.Cut(sc.Text(), ":")
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				continue
			}
			switch k {
			case "Rss":
				u.RSSBytes = kb << 10
			case "Pss":
				u.PSSBytes = kb << 10
			}
		}
		r.Close()
	}
	p.mu.Lock()
	nsName := ""
	if p.rec.Network != nil {
		nsName = p.rec.Network.NetNS
	}
	p.mu.Unlock()
	if nsName != "" {
		if ifs, err := netnsInterfaces(nsName); err == nil {
			u.Interfaces, u.PodNetworkSeen = ifs, true
		}
	}
	return u, nil
}

// netnsInterfaces reads the counters of a named network namespace's
// interfaces but loopback.
func netnsInterfaces(name string) ([]InterfaceUsage, error) {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return nil, err
	}
	var out []InterfaceUsage
	for _, l := range links {
		a := l.Attrs()
		// The tap to the VM carries the same traffic as the pod's
		// interface: only the pod's count.
		if a.Flags&net.FlagLoopback != 0 || a.Statistics == nil || l.Type() == "tuntap" {
			continue
		}
		s := a.Statistics
		out = append(out, InterfaceUsage{Name: a.Name,
			RxBytes: s.RxBytes, TxBytes: s.TxBytes, RxPackets: s.RxPackets, TxPackets: s.TxPackets,
			RxErrors: s.RxErrors, TxErrors: s.TxErrors, RxDropped: s.RxDropped, TxDropped: s.TxDropped})
	}
	return out, nil
}
