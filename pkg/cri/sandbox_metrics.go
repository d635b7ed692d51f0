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
// the host sees it (its QEMU's CPU and memory: the pod's whole cost) and
// the pod's network.
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

// The writable layer's "device" label: one filesystem in the guest.
const guestLayerDevice = "guest-rootfs"

func (s *Service) podMetrics(ctx context.Context, p *sandbox.Pod) *runtimeapi.PodSandboxMetrics {
	out := &runtimeapi.PodSandboxMetrics{PodSandboxId: p.ID()}
	now := time.Now()
	m := metricSet{ts: now.UnixNano(), labels: []string{p.ID(), p.Config().GetMetadata().GetName(), ""}}
	if u, err := p.VMUsage(); err != nil {
		klog.V(2).InfoS("pod VM usage", "pod", p.ID(), "err", err)
	} else {
		m.counter("container_cpu_usage_seconds_total", u.CPUNanos/uint64(time.Second), "total")
		m.gauge("container_memory_working_set_bytes", u.RSSBytes)
		m.gauge("container_memory_rss", u.PSSBytes)
		for _, i := range u.Interfaces {
			m.counter("container_network_receive_bytes_total", i.RxBytes, i.Name)
			m.counter("container_network_transmit_bytes_total", i.TxBytes, i.Name)
			m.counter("container_network_receive_packets_total", i.RxPackets, i.Name)
			m.counter("container_network_transmit_packets_total", i.TxPackets, i.Name)
			m.counter("container_network_receive_errors_total", i.RxErrors, i.Name)
			m.counter("container_network_transmit_errors_total", i.TxErrors, i.Name)
			m.counter("container_network_receive_packets_dropped_total", i.RxDropped, i.Name)
			m.counter("container_network_transmit_packets_dropped_total", i.TxDropped, i.Name)
		}
		out.Metrics = m.out
	}
	for _, c := range s.pods.PodContainers(p.ID()) {
		status := c.Status()
		if status.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
			continue
		}
		st, err := s.stats.ContainerStats(ctx, c.ID(), true)
		if err != nil {
			continue
		}
		cfg := c.Config()
		m := metricSet{ts: st.Timestamp.UnixNano(), labels: []string{c.ID(), cfg.GetMetadata().GetName(), cfg.GetImage().GetImage()}}
		sec := func(ns uint64) uint64 { return ns / uint64(time.Second) }
		m.counter("container_cpu_usage_seconds_total", sec(st.CPUUsageNanos), "total")
		m.counter("container_cpu_user_seconds_total", sec(st.CPUUserNanos))
		m.counter("container_cpu_system_seconds_total", sec(st.CPUSystemNanos))
		m.counter("container_cpu_cfs_periods_total", st.CPUPeriods)
		m.counter("container_cpu_cfs_throttled_periods_total", st.CPUThrottledPeriods)
		m.counter("container_cpu_cfs_throttled_seconds_total", sec(st.CPUThrottledNanos))
		m.gauge("container_memory_usage_bytes", st.MemoryUsageBytes)
		m.gauge("container_memory_working_set_bytes", st.MemoryWorkingSetBytes)
		m.gauge("container_memory_rss", st.MemoryRSSBytes)
		m.gauge("container_memory_cache", st.MemoryCacheBytes)
		m.gauge("container_memory_kernel_usage", st.MemoryKernelBytes)
		m.gauge("container_memory_mapped_file", st.MemoryMappedFileBytes)
		m.gauge("container_memory_max_usage_bytes", st.MemoryMaxUsageBytes)
		m.gauge("container_memory_swap", st.MemorySwapBytes)
		m.counter("container_memory_failcnt", st.MemoryLimitHits)
		for _, scope := range []string{"container", "hierarchy"} {
			m.counter("container_memory_failures_total", st.PageFaults, "pgfault", scope)
			m.counter("container_memory_failures_total", st.MajorPageFaults, "pgmajfault", scope)
		}
		m.counter("container_oom_events_total", st.OOMKills)
		m.gauge("container_fs_usage_bytes", st.WritableLayerBytes, guestLayerDevice)
		m.gauge("container_fs_limit_bytes", st.WritableLayerLimitBytes, guestLayerDevice)
		m.gauge("container_fs_inodes_total", st.WritableLayerInodes, guestLayerDevice)
		m.gauge("container_fs_inodes_free", st.WritableLayerInodesFree, guestLayerDevice)
		if st.IOReads+st.IOWrites > 0 {
			m.counter("container_fs_reads_bytes_total", st.IOReadBytes, guestLayerDevice)
			m.counter("container_fs_writes_bytes_total", st.IOWriteBytes, guestLayerDevice)
			m.counter("container_fs_reads_total", st.IOReads, guestLayerDevice)
			m.counter("container_fs_writes_total", st.IOWrites, guestLayerDevice)
			m.counter("container_blkio_device_usage_total", st.IOReadBytes, guestLayerDevice, "", "", "Read")
			m.counter("container_blkio_device_usage_total", st.IOWriteBytes, guestLayerDevice, "", "", "Write")
		}
		m.gauge("container_processes", st.Processes)
		m.gauge("container_threads", st.Pids)
		m.gauge("container_threads_max", st.PidsMax)
		m.gauge("container_file_descriptors", st.FileDescriptors)
		m.gauge("container_sockets", st.Sockets)
		res := cfg.GetLinux().GetResources() // as updated since
		m.gauge("container_spec_cpu_period", uint64(max(res.GetCpuPeriod(), 0)))
		m.gauge("container_spec_cpu_quota", uint64(max(res.GetCpuQuota(), 0)))
		m.gauge("container_spec_cpu_shares", uint64(max(res.GetCpuShares(), 0)))
		m.gauge("container_spec_memory_limit_bytes", uint64(max(res.GetMemoryLimitInBytes(), 0)))
		m.gauge("container_spec_memory_swap_limit_bytes", uint64(max(res.GetMemorySwapLimitInBytes(), 0)))
		m.gauge("container_start_time_seconds", uint64(status.StartedAt/int64(time.Second)))
		m.gauge("container_last_seen", uint64(now.Unix()))
		out.ContainerMetrics = append(out.ContainerMetrics, &runtimeapi.ContainerMetrics{ContainerId: c.ID(), Metrics: m.out})
	}
	return out
}

// metricSet builds metrics sharing a timestamp and the base label values;
// each metric may add its own.
type metricSet struct {
	ts     int64
	labels []string
	out    []*runtimeapi.Metric
}

func (m *metricSet) add(name string, typ runtimeapi.MetricType, v uint64, extra []string) {
	lv := append(append([]string{}, m.labels...), extra...)
	m.out = append(m.out, &runtimeapi.Metric{Name: name, Timestamp: m.ts, MetricType: typ, LabelValues: lv, Value: &runtimeapi.UInt64Value{Value: v}})
}

func (m *metricSet) counter(name string, v uint64, extra ...string) {
	m.add(name, runtimeapi.MetricType_COUNTER, v, extra)
}

func (m *metricSet) gauge(name string, v uint64, extra ...string) {
	m.add(name, runtimeapi.MetricType_GAUGE, v, extra)
}
