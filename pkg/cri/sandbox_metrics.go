package cri

import (
	"context"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"

	"github.com/hyperlet/hyperlet/pkg/sandbox"
)

// ListPodSandboxMetrics reports cAdvisor's metrics for every ready pod VM:
// per container from its cgroup in the guest, and for the pod the VM as
// the host sees it (its CPU and memory, the guest kernel and emulation
// included: the pod's whole cost) and the pod's network.
func (s *Service) ListPodSandboxMetrics(ctx context.Context, r *runtimeapi.ListPodSandboxMetricsRequest) (*runtimeapi.ListPodSandboxMetricsResponse, error) {
	resp := &runtimeapi.ListPodSandboxMetricsResponse{}
	for _, p := range s.pods.Pods() {
		if st, _, _ := p.Snapshot(); st != runtimeapi.PodSandboxState_SANDBOX_READY {
			continue
		}
		resp.PodMetrics = append(resp.PodMetrics, s.podMetrics(ctx, p))
	}
	return resp, nil
}

func (s *Service) podMetrics(ctx context.Context, p *sandbox.Pod) *runtimeapi.PodSandboxMetrics {
	out := &runtimeapi.PodSandboxMetrics{PodSandboxId: p.ID()}
	now := time.Now().UnixNano()
	podLabels := []string{p.ID(), p.Config().GetMetadata().GetName(), ""}
	if u, err := p.VMUsage(); err != nil {
		klog.V(2).InfoS("pod VM usage", "pod", p.ID(), "err", err)
	} else {
		m := metricSet{ts: now, labels: podLabels}
		m.counter(metricCPUSeconds, u.CPUNanos/uint64(time.Second))
		m.gauge(metricMemWS, u.RSSBytes)
		m.gauge(metricMemRSS, u.PSSBytes)
		for _, i := range u.Interfaces {
			n := metricSet{ts: now, labels: append(append([]string{}, podLabels...), i.Name)}
			n.counter(metricNetRxBytes, i.RxBytes)
			n.counter(metricNetTxBytes, i.TxBytes)
			n.counter(metricNetRxPkts, i.RxPackets)
			n.counter(metricNetTxPkts, i.TxPackets)
			n.counter(metricNetRxErrors, i.RxErrors)
			n.counter(metricNetTxErrors, i.TxErrors)
			n.counter(metricNetRxDrops, i.RxDropped)
			n.counter(metricNetTxDrops, i.TxDropped)
			m.out = append(m.out, n.out...)
		}
		out.Metrics = m.out
	}
	for _, c := range s.pods.PodContainers(p.ID()) {
		if c.Status().State != runtimeapi.ContainerState_CONTAINER_RUNNING {
			continue
		}
		st, err := s.stats.ContainerStats(ctx, c.ID())
		if err != nil {
			continue
		}
		cfg := c.Config()
		m := metricSet{ts: st.Timestamp.UnixNano(), labels: []string{c.ID(), cfg.GetMetadata().GetName(), cfg.GetImage().GetImage()}}
		m.counter(metricCPUSeconds, st.CPUUsageNanos/uint64(time.Second))
		m.gauge(metricMemUsage, st.MemoryUsageBytes)
		m.gauge(metricMemWS, st.MemoryWorkingSetBytes)
		m.gauge(metricMemRSS, st.MemoryRSSBytes)
		if st.MemoryUsageBytes > st.MemoryRSSBytes {
			// cgroup v2 charges a container its page cache and its
			// anonymous memory (RSS); the kernel's own share is small.
			m.gauge(metricMemCache, st.MemoryUsageBytes-st.MemoryRSSBytes)
		}
		m.gauge(metricFSUsage, st.WritableLayerBytes)
		m.gauge(metricFSInodes, st.WritableLayerInodes)
		m.gauge(metricProcesses, st.Pids)
		out.ContainerMetrics = append(out.ContainerMetrics, &runtimeapi.ContainerMetrics{ContainerId: c.ID(), Metrics: m.out})
	}
	return out
}

// metricSet builds metrics sharing a timestamp and label values.
type metricSet struct {
	ts     int64
	labels []string
	out    []*runtimeapi.Metric
}

func (m *metricSet) add(name string, typ runtimeapi.MetricType, v uint64) {
	m.out = append(m.out, &runtimeapi.Metric{Name: name, Timestamp: m.ts, MetricType: typ, LabelValues: m.labels, Value: &runtimeapi.UInt64Value{Value: v}})
}

func (m *metricSet) counter(name string, v uint64) { m.add(name, runtimeapi.MetricType_COUNTER, v) }
func (m *metricSet) gauge(name string, v uint64)   { m.add(name, runtimeapi.MetricType_GAUGE, v) }
