package cri

import (
	"context"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hyperlet/hyperlet/pkg/sandbox"
)

// PodSandboxStats sums the pod's container stats.
func (s *Service) PodSandboxStats(ctx context.Context, r *runtimeapi.PodSandboxStatsRequest) (*runtimeapi.PodSandboxStatsResponse, error) {
	if s.hostPod(r.PodSandboxId) {
		return s.host.PodSandboxStats(ctx, r)
	}
	p, err := s.pods.Pod(r.PodSandboxId)
	if err != nil {
		return nil, err
	}
	return &runtimeapi.PodSandboxStatsResponse{Stats: s.podStats(ctx, p)}, nil
}

// ListPodSandboxStats reports stats of the ready pods that match.
func (s *Service) ListPodSandboxStats(ctx context.Context, r *runtimeapi.ListPodSandboxStatsRequest) (*runtimeapi.ListPodSandboxStatsResponse, error) {
	f := r.GetFilter()
	resp := &runtimeapi.ListPodSandboxStatsResponse{}
	for _, p := range s.pods.Pods() {
		if f.GetId() != "" && !strings.HasPrefix(p.ID(), f.GetId()) || !matchLabels(p.Config().GetLabels(), f.GetLabelSelector()) {
			continue
		}
		if st, _, _ := p.Snapshot(); st != runtimeapi.PodSandboxState_SANDBOX_READY {
			continue
		}
		resp.Stats = append(resp.Stats, s.podStats(ctx, p))
	}
	if h, ok := hostList(s, "pod stats", func(h Host) (*runtimeapi.ListPodSandboxStatsResponse, error) { return h.ListPodSandboxStats(ctx, r) }); ok {
		resp.Stats = append(resp.Stats, h.Stats...)
	}
	return resp, nil
}

func (s *Service) podStats(ctx context.Context, p *sandbox.Pod) *runtimeapi.PodSandboxStats {
	cfg := p.Config()
	lx := &runtimeapi.LinuxPodSandboxStats{}
	var cpu, mem, ws, rss uint64
	var ts int64
	for _, c := range s.pods.PodContainers(p.ID()) {
		if c.Status().State != runtimeapi.ContainerState_CONTAINER_RUNNING {
			continue
		}
		cs := s.containerStats(ctx, c)
		lx.Containers = append(lx.Containers, cs)
		if cs.Cpu != nil {
			cpu += cs.Cpu.UsageCoreNanoSeconds.GetValue()
			mem += cs.Memory.UsageBytes.GetValue()
			ws += cs.Memory.WorkingSetBytes.GetValue()
			rss += cs.Memory.RssBytes.GetValue()
			ts = cs.Cpu.Timestamp
		}
	}
	lx.Cpu = &runtimeapi.CpuUsage{Timestamp: ts, UsageCoreNanoSeconds: &runtimeapi.UInt64Value{Value: cpu}}
	lx.Memory = &runtimeapi.MemoryUsage{Timestamp: ts,
		UsageBytes: &runtimeapi.UInt64Value{Value: mem}, WorkingSetBytes: &runtimeapi.UInt64Value{Value: ws},
		RssBytes: &runtimeapi.UInt64Value{Value: rss}}
	return &runtimeapi.PodSandboxStats{
		Attributes: &runtimeapi.PodSandboxAttributes{
			Id: p.ID(), Metadata: cfg.GetMetadata(), Labels: cfg.GetLabels(), Annotations: cfg.GetAnnotations(),
		},
		Linux: lx,
	}
}
