package cri

import (
	"context"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hyperlet/hyperlet/pkg/sandbox"
)

// ContainerStats reports a container's CPU, memory and writable layer use,
// read from its cgroup in the VM.
func (s *Service) ContainerStats(ctx context.Context, r *runtimeapi.ContainerStatsRequest) (*runtimeapi.ContainerStatsResponse, error) {
	if s.hostContainer(r.ContainerId) {
		return s.host.ContainerStats(ctx, r)
	}
	c, err := s.ctrs.Container(r.ContainerId)
	if err != nil {
		return nil, err
	}
	return &runtimeapi.ContainerStatsResponse{Stats: s.containerStats(ctx, c)}, nil
}

// ListContainerStats reports stats of the running containers that match.
func (s *Service) ListContainerStats(ctx context.Context, r *runtimeapi.ListContainerStatsRequest) (*runtimeapi.ListContainerStatsResponse, error) {
	f := r.GetFilter()
	resp := &runtimeapi.ListContainerStatsResponse{}
	for _, c := range s.ctrs.Containers() {
		if f.GetId() != "" && !strings.HasPrefix(c.ID(), f.GetId()) ||
			f.GetPodSandboxId() != "" && !strings.HasPrefix(c.PodID(), f.GetPodSandboxId()) ||
			!matchLabels(c.Config().GetLabels(), f.GetLabelSelector()) {
			continue
		}
		if c.Status().State != runtimeapi.ContainerState_CONTAINER_RUNNING {
			continue
		}
		resp.Stats = append(resp.Stats, s.containerStats(ctx, c))
	}
	if h, ok := hostList(s, "container stats", func(h Host) (*runtimeapi.ListContainerStatsResponse, error) { return h.ListContainerStats(ctx, r) }); ok {
		resp.Stats = append(resp.Stats, h.Stats...)
	}
	return resp, nil
}

// containerStats never fails: a container whose VM cannot answer gets
// stats without usage, as kubelet expects an entry per container.
func (s *Service) containerStats(ctx context.Context, c *sandbox.Container) *runtimeapi.ContainerStats {
	cfg := c.Config()
	out := &runtimeapi.ContainerStats{
		Attributes: &runtimeapi.ContainerAttributes{
			Id: c.ID(), Metadata: cfg.GetMetadata(), Labels: cfg.GetLabels(), Annotations: cfg.GetAnnotations(),
		},
	}
	st, err := s.stats.ContainerStats(ctx, c.ID(), false)
	if err != nil {
		return out
	}
	ts := st.Timestamp.UnixNano()
	out.Cpu = &runtimeapi.CpuUsage{Timestamp: ts, UsageCoreNanoSeconds: &runtimeapi.UInt64Value{Value: st.CPUUsageNanos}}
	out.Memory = &runtimeapi.MemoryUsage{
		Timestamp:       ts,
		WorkingSetBytes: &runtimeapi.UInt64Value{Value: st.MemoryWorkingSetBytes},
		UsageBytes:      &runtimeapi.UInt64Value{Value: st.MemoryUsageBytes},
		RssBytes:        &runtimeapi.UInt64Value{Value: st.MemoryRSSBytes},
		PageFaults:      &runtimeapi.UInt64Value{Value: st.PageFaults},
		MajorPageFaults: &runtimeapi.UInt64Value{Value: st.MajorPageFaults},
	}
	// The writable layer is a tmpfs in the guest, charged to the pod VM's
	// memory; kubelet looks the identifier up on the host, so it names the
	// host filesystem that holds the pod's state.
	out.WritableLayer = &runtimeapi.FilesystemUsage{
		Timestamp:  ts,
		FsId:       &runtimeapi.FilesystemIdentifier{Mountpoint: s.layerFS},
		UsedBytes:  &runtimeapi.UInt64Value{Value: st.WritableLayerBytes},
		InodesUsed: &runtimeapi.UInt64Value{Value: st.WritableLayerInodes},
	}
	return out
}
