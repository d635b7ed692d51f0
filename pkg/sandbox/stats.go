package sandbox

import (
	"context"
	"time"
)

// ContainerStats is a container's usage, as its cgroup in the VM reports it.
type ContainerStats struct {
	Timestamp             time.Time
	CPUUsageNanos         uint64
	MemoryUsageBytes      uint64
	MemoryWorkingSetBytes uint64
	MemoryRSSBytes        uint64
	PageFaults            uint64
	MajorPageFaults       uint64
	// The writable layer (a tmpfs in the guest) and its filesystem.
	WritableLayerBytes, WritableLayerInodes          uint64
	WritableLayerLimitBytes, WritableLayerInodesFree uint64
	// Pids counts tasks (threads); PidsMax is their limit (0: none).
	Pids, PidsMax                              uint64
	Processes, FileDescriptors, Sockets        uint64
	CPUUserNanos, CPUSystemNanos               uint64
	CPUPeriods, CPUThrottledPeriods            uint64
	CPUThrottledNanos                          uint64
	MemoryCacheBytes, MemoryKernelBytes        uint64
	MemoryMappedFileBytes, MemoryMaxUsageBytes uint64
	MemorySwapBytes                            uint64
	// MemoryLimitHits counts the times usage reached the limit; OOMKills
	// the processes the OOM killer took.
	MemoryLimitHits, OOMKills                    uint64
	IOReadBytes, IOWriteBytes, IOReads, IOWrites uint64
}

// statsTimeout bounds one container's stats call.
const statsTimeout = 5 * time.Second

// ContainerStats reads a container's usage from its cgroup in the VM;
// openFiles also counts its processes' open files and sockets (Processes,
// FileDescriptors and Sockets stay 0 without), which costs the guest more.
func (m *Manager) ContainerStats(ctx context.Context, id string, openFiles bool) (*ContainerStats, error) {
	c, err := m.Container(id)
	if err != nil {
		return nil, err
	}
	client, err := c.pod.client()
	if err != nil {
		return nil, err
	}
	// One VM that stopped answering must not stall the node's stats.
	ctx, cancel := context.WithTimeout(ctx, statsTimeout)
	defer cancel()
	st, err := client.Stats(ctx, c.ID(), openFiles)
	if err != nil {
		return nil, err
	}
	return &ContainerStats{
		Timestamp:     time.Unix(0, st.TimestampUnixNano),
		CPUUsageNanos: st.CpuUsageNano, MemoryUsageBytes: st.MemoryUsageBytes,
		MemoryWorkingSetBytes: st.MemoryWorkingSetBytes, MemoryRSSBytes: st.MemoryRssBytes,
		PageFaults: st.PageFaults, MajorPageFaults: st.MajorPageFaults,
		WritableLayerBytes: st.WritableLayerBytes, WritableLayerInodes: st.WritableLayerInodes,
		WritableLayerLimitBytes: st.WritableLayerLimitBytes, WritableLayerInodesFree: st.WritableLayerInodesFree,
		Pids: st.Pids, PidsMax: st.PidsMax,
		Processes: st.Processes, FileDescriptors: st.FileDescriptors, Sockets: st.Sockets,
		CPUUserNanos: st.CpuUserNano, CPUSystemNanos: st.CpuSystemNano,
		CPUPeriods: st.CpuPeriods, CPUThrottledPeriods: st.CpuThrottledPeriods, CPUThrottledNanos: st.CpuThrottledNano,
		MemoryCacheBytes: st.MemoryCacheBytes, MemoryKernelBytes: st.MemoryKernelBytes,
		MemoryMappedFileBytes: st.MemoryMappedFileBytes, MemoryMaxUsageBytes: st.MemoryMaxUsageBytes,
		MemorySwapBytes: st.MemorySwapBytes, MemoryLimitHits: st.MemoryLimitHits, OOMKills: st.OomKills,
		IOReadBytes: st.IoReadBytes, IOWriteBytes: st.IoWriteBytes, IOReads: st.IoReads, IOWrites: st.IoWrites,
	}, nil
}

// PodContainers lists a pod's containers.
func (m *Manager) PodContainers(podID string) []*Container { return m.podContainers(podID) }
