package cri

import (
	"context"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// baseLabels label every metric (kubelet adds namespace, pod and
// container); some add their own (the interface, a failure type...).
var baseLabels = []string{"id", "name", "image"}

func labels(extra ...string) []string { return append(append([]string{}, baseLabels...), extra...) }

// metricDescriptors are the cAdvisor metrics ListPodSandboxMetrics
// reports (kubelet serves them on /metrics/cadvisor), with cAdvisor's names
// and units. CRI values are integers: times are whole seconds, as the
// names say. For the pod itself, CPU and memory are its VM's as the host
// sees them: the guest kernel and the emulation are the pod's cost too.
var metricDescriptors = []*runtimeapi.MetricDescriptor{
	{Name: "container_cpu_usage_seconds_total", Help: "Cumulative CPU time consumed in seconds.", LabelKeys: labels("cpu")},
	{Name: "container_cpu_user_seconds_total", Help: "Cumulative user CPU time consumed in seconds.", LabelKeys: labels()},
	{Name: "container_cpu_system_seconds_total", Help: "Cumulative system CPU time consumed in seconds.", LabelKeys: labels()},
	{Name: "container_cpu_cfs_periods_total", Help: "Number of elapsed enforcement period intervals.", LabelKeys: labels()},
	{Name: "container_cpu_cfs_throttled_periods_total", Help: "Number of throttled period intervals.", LabelKeys: labels()},
	{Name: "container_cpu_cfs_throttled_seconds_total", Help: "Total time duration the container has been throttled.", LabelKeys: labels()},
	{Name: "container_memory_usage_bytes", Help: "Current memory usage in bytes, including all memory regardless of when it was accessed.", LabelKeys: labels()},
	{Name: "container_memory_working_set_bytes", Help: "Current working set in bytes.", LabelKeys: labels()},
	{Name: "container_memory_rss", Help: "Size of RSS in bytes.", LabelKeys: labels()},
	{Name: "container_memory_cache", Help: "Number of bytes of page cache memory.", LabelKeys: labels()},
	{Name: "container_memory_kernel_usage", Help: "Size of kernel memory allocated in bytes.", LabelKeys: labels()},
	{Name: "container_memory_mapped_file", Help: "Size of memory mapped files in bytes.", LabelKeys: labels()},
	{Name: "container_memory_max_usage_bytes", Help: "Maximum memory usage recorded in bytes.", LabelKeys: labels()},
	{Name: "container_memory_swap", Help: "Container swap usage in bytes.", LabelKeys: labels()},
	{Name: "container_memory_failcnt", Help: "Number of memory usage hits limits.", LabelKeys: labels()},
	{Name: "container_memory_failures_total", Help: "Cumulative count of memory allocation failures.", LabelKeys: labels("failure_type", "scope")},
	{Name: "container_oom_events_total", Help: "Count of out of memory events observed for the container.", LabelKeys: labels()},
	{Name: "container_fs_usage_bytes", Help: "Number of bytes that are consumed by the container on this filesystem.", LabelKeys: labels("device")},
	{Name: "container_fs_limit_bytes", Help: "Number of bytes that can be consumed by the container on this filesystem.", LabelKeys: labels("device")},
	{Name: "container_fs_inodes_total", Help: "Number of available Inodes.", LabelKeys: labels("device")},
	{Name: "container_fs_inodes_free", Help: "Number of available Inodes.", LabelKeys: labels("device")},
	{Name: "container_fs_reads_bytes_total", Help: "Cumulative count of bytes read.", LabelKeys: labels("device")},
	{Name: "container_fs_writes_bytes_total", Help: "Cumulative count of bytes written.", LabelKeys: labels("device")},
	{Name: "container_fs_reads_total", Help: "Cumulative count of reads completed.", LabelKeys: labels("device")},
	{Name: "container_fs_writes_total", Help: "Cumulative count of writes completed.", LabelKeys: labels("device")},
	{Name: "container_blkio_device_usage_total", Help: "Blkio device bytes usage.", LabelKeys: labels("device", "major", "minor", "operation")},
	{Name: "container_processes", Help: "Number of processes running inside the container.", LabelKeys: labels()},
	{Name: "container_threads", Help: "Number of threads running inside the container.", LabelKeys: labels()},
	{Name: "container_threads_max", Help: "Maximum number of threads allowed inside the container, infinity if value is zero.", LabelKeys: labels()},
	{Name: "container_file_descriptors", Help: "Number of open file descriptors for the container.", LabelKeys: labels()},
	{Name: "container_sockets", Help: "Number of open sockets for the container.", LabelKeys: labels()},
	{Name: "container_spec_cpu_period", Help: "CPU period of the container.", LabelKeys: labels()},
	{Name: "container_spec_cpu_quota", Help: "CPU quota of the container.", LabelKeys: labels()},
	{Name: "container_spec_cpu_shares", Help: "CPU share of the container.", LabelKeys: labels()},
	{Name: "container_spec_memory_limit_bytes", Help: "Memory limit for the container.", LabelKeys: labels()},
	{Name: "container_spec_memory_swap_limit_bytes", Help: "Memory swap limit for the container.", LabelKeys: labels()},
	{Name: "container_start_time_seconds", Help: "Start time of the container since unix epoch in seconds.", LabelKeys: labels()},
	{Name: "container_last_seen", Help: "Last time a container was seen by the exporter.", LabelKeys: labels()},
	{Name: "container_network_receive_bytes_total", Help: "Cumulative count of bytes received.", LabelKeys: labels("interface")},
	{Name: "container_network_transmit_bytes_total", Help: "Cumulative count of bytes transmitted.", LabelKeys: labels("interface")},
	{Name: "container_network_receive_packets_total", Help: "Cumulative count of packets received.", LabelKeys: labels("interface")},
	{Name: "container_network_transmit_packets_total", Help: "Cumulative count of packets transmitted.", LabelKeys: labels("interface")},
	{Name: "container_network_receive_errors_total", Help: "Cumulative count of errors encountered while receiving.", LabelKeys: labels("interface")},
	{Name: "container_network_transmit_errors_total", Help: "Cumulative count of errors encountered while transmitting.", LabelKeys: labels("interface")},
	{Name: "container_network_receive_packets_dropped_total", Help: "Cumulative count of packets dropped while receiving.", LabelKeys: labels("interface")},
	{Name: "container_network_transmit_packets_dropped_total", Help: "Cumulative count of packets dropped while transmitting.", LabelKeys: labels("interface")},
}

// ListMetricDescriptors describes the metrics ListPodSandboxMetrics reports.
func (s *Service) ListMetricDescriptors(ctx context.Context, r *runtimeapi.ListMetricDescriptorsRequest) (*runtimeapi.ListMetricDescriptorsResponse, error) {
	return &runtimeapi.ListMetricDescriptorsResponse{Descriptors: metricDescriptors}, nil
}
