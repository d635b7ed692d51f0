package main

import (
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
)

// containerStats reads a container's usage from its cgroup (cgroup v2) and
// the size of its writable layer.
func containerStats(id string, openFiles bool) (*agentapi.ContainerStatsResponse, error) {
	if err := validID(id); err != nil {
		return nil, err
	}
	cg := cgroupDir(id)
	if _, err := os.Stat(cg); err != nil {
		return nil, status.Errorf(codes.NotFound, "container %q has no cgroup", id)
	}
	r := &agentapi.ContainerStatsResponse{TimestampUnixNano: time.Now().UnixNano()}
	// Each flat-keyed file is read once (kubelet asks every few seconds).
	cpu := flatKeyed(filepath.Join(cg, "cpu.stat"))
	mem := flatKeyed(filepath.Join(cg, "memory.stat"))
	events := flatKeyed(filepath.Join(cg, "memory.events"))
	r.CpuUsageNano = cpu["usage_usec"] * 1000
	r.MemoryUsageBytes = readUint(filepath.Join(cg, "memory.current"))
	if inactive := mem["inactive_file"]; r.MemoryUsageBytes > inactive {
		r.MemoryWorkingSetBytes = r.MemoryUsageBytes - inactive
	}
	r.MemoryRssBytes = mem["anon"]
	r.PageFaults = mem["pgfault"]
	r.MajorPageFaults = mem["pgmajfault"]
	r.Pids = readUint(filepath.Join(cg, "pids.current"))
	r.CpuUserNano = cpu["user_usec"] * 1000
	r.CpuSystemNano = cpu["system_usec"] * 1000
	r.CpuPeriods = cpu["nr_periods"]
	r.CpuThrottledPeriods = cpu["nr_throttled"]
	r.CpuThrottledNano = cpu["throttled_usec"] * 1000
	r.MemoryCacheBytes = mem["file"]
	r.MemoryKernelBytes = mem["kernel"]
	r.MemoryMappedFileBytes = mem["file_mapped"]
	r.MemoryMaxUsageBytes = readUint(filepath.Join(cg, "memory.peak"))
	r.MemorySwapBytes = readUint(filepath.Join(cg, "memory.swap.current"))
	r.MemoryLimitHits = events["max"]
	r.OomKills = events["oom_kill"]
	r.PidsMax = readUint(filepath.Join(cg, "pids.max")) // "max" reads as 0
	for _, l := range strings.Split(readString(filepath.Join(cg, "io.stat")), "\n") {
		for _, kv := range strings.Fields(l)[min(1, len(strings.Fields(l))):] {
			k, v, _ := strings.Cut(kv, "=")
			n, _ := strconv.ParseUint(v, 10, 64)
			switch k {
			case "rbytes":
				r.IoReadBytes += n
			case "wbytes":
				r.IoWriteBytes += n
			case "rios":
				r.IoReads += n
			case "wios":
				r.IoWrites += n
			}
		}
	}
	if openFiles {
		r.Processes, r.FileDescriptors, r.Sockets = processFiles(cg)
	}
	upper := filepath.Join(bundleDir(id), "upper")
	var fsst syscall.Statfs_t
	if syscall.Statfs(upper, &fsst) == nil {
		r.WritableLayerLimitBytes = fsst.Blocks * uint64(fsst.Bsize)
		r.WritableLayerInodesFree = fsst.Ffree
	}
	filepath.WalkDir(upper, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		r.WritableLayerInodes++
		if info, err := d.Info(); err == nil {
			if st, ok := info.Sys().(*syscall.Stat_t); ok {
				r.WritableLayerBytes += uint64(st.Blocks) * 512
			}
		}
		return nil
	})
	return r, nil
}

// flatKeyed reads a cgroup file of "key value" lines.
func flatKeyed(file string) map[string]uint64 {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil
	}
	kv := map[string]uint64{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, " "); ok {
			n, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			kv[k] = n
		}
	}
	return kv
}

func readUint(file string) uint64 {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	return n
}

func readString(file string) string {
	b, _ := os.ReadFile(file)
	return string(b)
}

// processFiles counts the processes of a cgroup tree, their open file
// descriptors and, of those, sockets.
func processFiles(cg string) (procs, fds, sockets uint64) {
	filepath.WalkDir(cg, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
			return nil
		}
		for _, pid := range strings.Fields(readString(path)) {
			procs++
			dir := filepath.Join("/proc", pid, "fd")
			ents, err := os.ReadDir(dir)
			if err != nil {
				continue
			}
			for _, e := range ents {
				fds++
				if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && strings.HasPrefix(l, "socket:") {
					sockets++
				}
			}
		}
		return nil
	})
	return procs, fds, sockets
}
