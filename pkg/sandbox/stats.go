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
	// The writable layer (a tmpfs in the guest).
	WritableLayerBytes, WritableLayerInodes uint64
	Pids                                    uint64
}

// statsTimeout bounds one container's stats call.
const statsTimeout = 5 * time.Second

// ContainerStats reads a container's usage from its cgroup in the VM.
func (m *Manager) ContainerStats(ctx context.Context, id string) (*ContainerStats, error) {
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
	st, err := client.Stats(ctx, c.ID())
	if err != nil {
		return nil, err
	}
	return &ContainerStats{
		Timestamp:     time.Unix(0, st.TimestampUnixNano),
		CPUUsageNanos: st.CpuUsageNano, MemoryUsageBytes: st.MemoryUsageBytes,
		MemoryWorkingSetBytes: st.MemoryWorkingSetBytes, MemoryRSSBytes: st.MemoryRssBytes,
		PageFaults: st.PageFaults, MajorPageFaults: st.MajorPageFaults,
		WritableLayerBytes: st.WritableLayerBytes, WritableLayerInodes: st.WritableLayerInodes,
		Pids: st.Pids,
	}, nil
}

// PodContainers lists a pod's containers.
func (m *Manager) PodContainers(podID string) []*Container { return m.podContainers(podID) }
