package cri

import (
	"context"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The cAdvisor metrics ListPodSandboxMetrics reports (kubelet serves them
// on /metrics/cadvisor), with cAdvisor's names and units. CRI values are
// integers: CPU time is whole seconds, as the name says.
const (
	metricCPUSeconds  = "container_cpu_usage_seconds_total"
	metricMemUsage    = "container_memory_usage_bytes"
	metricMemWS       = "container_memory_working_set_bytes"
	metricMemRSS      = "container_memory_rss"
	metricMemCache    = "container_memory_cache"
	metricFSUsage     = "container_fs_usage_bytes"
	metricFSInodes    = "container_fs_inodes_total"
	metricProcesses   = "container_processes"
	metricNetRxBytes  = "container_network_receive_bytes_total"
	metricNetTxBytes  = "container_network_transmit_bytes_total"
	metricNetRxPkts   = "container_network_receive_packets_total"
	metricNetTxPkts   = "container_network_transmit_packets_total"
	metricNetRxErrors = "container_network_receive_errors_total"
	metricNetTxErrors = "container_network_transmit_errors_total"
	metricNetRxDrops  = "container_network_receive_packets_dropped_total"
	metricNetTxDrops  = "container_network_transmit_packets_dropped_total"
)

// baseLabels label every metric (kubelet adds namespace, pod and
// container); network metrics add the interface.
var (
	baseLabels = []string{"id", "name", "image"}
	netLabels  = []string{"id", "name", "image", "interface"}
)

var metricDescriptors = []*runtimeapi.MetricDescriptor{
	{Name: metricCPUSeconds, Help: "Cumulative CPU time consumed in seconds (for the pod: its VM's, guest and emulation).", LabelKeys: baseLabels},
	{Name: metricMemUsage, Help: "Current memory usage in bytes, including all memory regardless of when it was accessed.", LabelKeys: baseLabels},
	{Name: metricMemWS, Help: "Current working set in bytes (for the pod: its VM's resident host memory).", LabelKeys: baseLabels},
	{Name: metricMemRSS, Help: "Size of RSS in bytes (for the pod: its VM's proportional share of host memory).", LabelKeys: baseLabels},
	{Name: metricMemCache, Help: "Number of bytes of page cache memory.", LabelKeys: baseLabels},
	{Name: metricFSUsage, Help: "Number of bytes consumed by the container's writable layer.", LabelKeys: baseLabels},
	{Name: metricFSInodes, Help: "Number of inodes used by the container's writable layer.", LabelKeys: baseLabels},
	{Name: metricProcesses, Help: "Number of processes running inside the container.", LabelKeys: baseLabels},
	{Name: metricNetRxBytes, Help: "Cumulative count of bytes received.", LabelKeys: netLabels},
	{Name: metricNetTxBytes, Help: "Cumulative count of bytes transmitted.", LabelKeys: netLabels},
	{Name: metricNetRxPkts, Help: "Cumulative count of packets received.", LabelKeys: netLabels},
	{Name: metricNetTxPkts, Help: "Cumulative count of packets transmitted.", LabelKeys: netLabels},
	{Name: metricNetRxErrors, Help: "Cumulative count of errors encountered while receiving.", LabelKeys: netLabels},
	{Name: metricNetTxErrors, Help: "Cumulative count of errors encountered while transmitting.", LabelKeys: netLabels},
	{Name: metricNetRxDrops, Help: "Cumulative count of packets dropped while receiving.", LabelKeys: netLabels},
	{Name: metricNetTxDrops, Help: "Cumulative count of packets dropped while transmitting.", LabelKeys: netLabels},
}

// ListMetricDescriptors describes the metrics ListPodSandboxMetrics reports.
func (s *Service) ListMetricDescriptors(ctx context.Context, r *runtimeapi.ListMetricDescriptorsRequest) (*runtimeapi.ListMetricDescriptorsResponse, error) {
	return &runtimeapi.ListMetricDescriptorsResponse{Descriptors: metricDescriptors}, nil
}
