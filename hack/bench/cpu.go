package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// userHZ is the unit of /proc's CPU times.
const userHZ = 100

// vcpuThread names a QEMU vCPU thread (QEMU names its threads with
// -name debug-threads=on): "CPU 0/TCG", "CPU 1/KVM".
var vcpuThread = regexp.MustCompile(`^CPU \d+/(TCG|KVM)$`)

// cpuSample is the machine's CPU time and each vCPU thread's at one moment.
// Under TCG a vCPU thread's time is the guest's emulated run time; what is
// left of the machine's time is the host side (daemons, QEMU's main loop
// and I/O threads, CNI, the kernel), which a KVM host pays as well.
type cpuSample struct {
	host  int64            // busy ticks of all CPUs
	vcpus map[string]int64 // by /proc/PID/task/TID
}

func sampleCPU() cpuSample {
	s := cpuSample{host: hostBusyTicks(), vcpus: map[string]int64{}}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		comm, err := os.ReadFile(p + "/comm")
		if err != nil || !bytes.HasPrefix(comm, []byte("qemu-system")) {
			continue
		}
		tasks, _ := filepath.Glob(p + "/task/[0-9]*")
		for _, t := range tasks {
			name, err := os.ReadFile(t + "/comm")
			if err != nil || !vcpuThread.Match(bytes.TrimSpace(name)) {
				continue
			}
			if ticks, ok := statTicks(t + "/stat"); ok {
				s.vcpus[t] = ticks
			}
		}
	}
	return s
}

// hostBusyTicks sums /proc/stat's cpu line but idle, iowait, steal (time
// the machine's own hypervisor took) and the guest fields (which user
// already counts).
func hostBusyTicks() int64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	var t int64
	for i, v := range f[1:] {
		if i == 3 || i == 4 || i >= 7 { // idle, iowait, steal, guest, guest_nice
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		t += n
	}
	return t
}

// cpuCount is the number of CPUs /proc/stat's cpu line sums.
func cpuCount() int {
	b, _ := os.ReadFile("/proc/stat")
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if len(l) > 3 && strings.HasPrefix(l, "cpu") && l[3] >= '0' && l[3] <= '9' {
			n++
		}
	}
	return max(n, 1)
}

// statTicks is utime + stime of a /proc stat file.
func statTicks(path string) (int64, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	// Fields after the command (which may hold spaces): utime is field
	// 14, stime 15.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0, false
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return u + s, true
}

// cpuUse is CPU time spent between two samples: all of it, and the part
// the vCPU threads ran. A vCPU thread that exited in between loses its
// time since the first sample, so phases that end VMs count only host.
type cpuUse struct{ host, guest time.Duration }

func (s cpuSample) since(before cpuSample) cpuUse {
	var g int64
	for t, ticks := range s.vcpus {
		g += ticks - before.vcpus[t]
	}
	tick := time.Second / userHZ
	return cpuUse{host: time.Duration(s.host-before.host) * tick, guest: time.Duration(g) * tick}
}

func (u cpuUse) add(v cpuUse) cpuUse { return cpuUse{u.host + v.host, u.guest + v.guest} }

// per is the use divided among n pods.
func (u cpuUse) per(n int) cpuUse {
	if n == 0 {
		return cpuUse{}
	}
	return cpuUse{u.host / time.Duration(n), u.guest / time.Duration(n)}
}

// cells renders a per-pod use as table cells: all CPU, vCPU threads, the
// vCPU share, and what is left outside the guest, in milliseconds.
func (u cpuUse) cells() string {
	share := "-"
	if u.host > 0 && u.guest > 0 {
		share = fmt.Sprintf("%.0f %%", 100*float64(u.guest)/float64(u.host))
	}
	rest := u.host - u.guest
	return fmt.Sprintf("%.0f | %.0f | %s | %.0f", ms(u.host), ms(u.guest), share, ms(max(rest, 0)))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
