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
func containerStats(id string) (*agentapi.ContainerStatsResponse, error) {
	if err := validID(id); err != nil {
		return nil, err
	}
	cg := cgroupDir(id)
	if _, err := os.Stat(cg); err != nil {
		return nil, status.Errorf(codes.NotFound, "container %q has no cgroup", id)
	}
	r := &agentapi.ContainerStatsResponse{TimestampUnixNano: time.Now().UnixNano()}
	r.CpuUsageNano = cgroupKey(filepath.Join(cg, "cpu.stat"), "usage_usec") * 1000
	r.MemoryUsageBytes = readUint(filepath.Join(cg, "memory.current"))
	memStat := filepath.Join(cg, "memory.stat")
	inactive := cgroupKey(memStat, "inactive_file")
	if r.MemoryUsageBytes > inactive {
		r.MemoryWorkingSetBytes = r.MemoryUsageBytes - inactive
	}
	r.MemoryRssBytes = cgroupKey(memStat, "anon")
	r.PageFaults = cgroupKey(memStat, "pgfault")
	r.MajorPageFaults = cgroupKey(memStat, "pgmajfault")
	r.Pids = readUint(filepath.Join(cg, "pids.current"))
	upper := filepath.Join(bundleDir(id), "upper")
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

func readUint(file string) uint64 {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	return n
}
