package integration

import (
	"context"
	"strings"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// checkPodMetrics checks the CRI metrics of a pod that served HTTP: every
// metric has a descriptor whose labels it fills; the pod reports its VM's
// CPU and memory and its interface's traffic; its container reports its
// memory and processes.
func checkPodMetrics(t *testing.T, d *criDaemon, ctx context.Context, pod string) {
	t.Helper()
	dr, err := d.rs.ListMetricDescriptors(ctx, &runtimeapi.ListMetricDescriptorsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string]int{}
	for _, desc := range dr.Descriptors {
		labels[desc.Name] = len(desc.LabelKeys)
	}
	mr, err := d.rs.ListPodSandboxMetrics(ctx, &runtimeapi.ListPodSandboxMetricsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var pm *runtimeapi.PodSandboxMetrics
	for _, m := range mr.PodMetrics {
		if m.PodSandboxId == pod {
			pm = m
		}
	}
	if pm == nil {
		t.Fatalf("no metrics for pod %s in %v", pod, mr.PodMetrics)
	}
	value := func(ms []*runtimeapi.Metric, name string, label ...string) (uint64, bool) {
		for _, m := range ms {
			n, ok := labels[m.Name]
			if !ok || n != len(m.LabelValues) {
				t.Errorf("metric %s: labels %v do not match its descriptor (%d keys, known %v)", m.Name, m.LabelValues, n, ok)
			}
			if m.Name == name && (len(label) == 0 || m.LabelValues[len(m.LabelValues)-1] == label[0]) {
				return m.Value.GetValue(), true
			}
		}
		return 0, false
	}
	for _, c := range []struct {
		name  string
		label []string
		min   uint64
	}{
		{"container_cpu_usage_seconds_total", nil, 1}, // the VM's boot alone takes more
		{"container_memory_working_set_bytes", nil, 16 << 20},
		{"container_network_receive_bytes_total", []string{"eth0"}, 1},
		{"container_network_transmit_bytes_total", []string{"eth0"}, 1},
	} {
		if v, ok := value(pm.Metrics, c.name, c.label...); !ok || v < c.min {
			t.Errorf("pod metric %s%v = %d (found %v), want at least %d", c.name, c.label, v, ok, c.min)
		}
	}
	// Open files are counted for the CRI metrics (not for plain stats).
	for _, name := range []string{"container_processes", "container_file_descriptors"} {
		var most uint64
		for _, c := range pm.ContainerMetrics {
			if v, ok := value(c.Metrics, name); ok {
				most = max(most, v)
			}
		}
		if most < 1 {
			t.Errorf("container metric %s: at most %d in the pod's containers", name, most)
		}
	}
	// Every metric described is reported, but the block I/O ones (the
	// writable layer is in guest memory: no I/O to count).
	found := map[string]bool{}
	for _, m := range pm.Metrics {
		found[m.Name] = true
	}
	for _, c := range pm.ContainerMetrics {
		for _, m := range c.Metrics {
			found[m.Name] = true
		}
	}
	for _, desc := range dr.Descriptors {
		if !found[desc.Name] && !strings.Contains(desc.Name, "_fs_reads") && !strings.Contains(desc.Name, "_fs_writes") && !strings.Contains(desc.Name, "blkio") {
			t.Errorf("metric %s described but not reported", desc.Name)
		}
	}
	if len(pm.ContainerMetrics) != 1 {
		t.Fatalf("container metrics %v", pm.ContainerMetrics)
	}
	cm := pm.ContainerMetrics[0].Metrics
	if v, ok := value(cm, "container_processes"); !ok || v < 1 {
		t.Errorf("container processes %d %v", v, ok)
	}
	if v, ok := value(cm, "container_memory_working_set_bytes"); !ok || v == 0 {
		t.Errorf("container working set %d %v", v, ok)
	}
}
