package integration

import (
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestPrometheusMetrics scrapes /metrics (parsed by Prometheus' own text
// parser) after a few pods: request counts and codes, pod start
// histograms, pods and containers by state, the accelerator, image pulls,
// and per-pod series that appear with a pod and go with it.
func TestPrometheusMetrics(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	d := startCRI(t, "top.metrics_address = "+strconv.Quote(addr))
	ctx := testCtx(t, 4*time.Minute)
	d.pull(ctx)
	scrape := func() map[string]*dto.MetricFamily {
		t.Helper()
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		parser := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := parser.TextToMetricFamilies(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return fams
	}
	// value sums a family's series whose labels include want.
	value := func(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, int) {
		var sum float64
		n := 0
		for _, m := range fams[name].GetMetric() {
			match := true
			for k, v := range want {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == k && lp.GetValue() == v {
						found = true
					}
				}
				match = match && found
			}
			if !match {
				continue
			}
			n++
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			}
		}
		return sum, n
	}

	a := podConfig("metrics-a")
	pa := d.runPod(ctx, a)
	b := podConfig("metrics-b")
	pb := d.runPod(ctx, b)
	d.createStart(ctx, pa, a, ctrConfig("spin", "sh", "-c", "while :; do :; done"))
	bad := podConfig("metrics-bad")
	bad.Metadata.Uid = ""
	if _, err := d.rs.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: bad}); err == nil {
		t.Fatal("a pod without a uid started")
	}
	time.Sleep(2 * time.Second)

	fams := scrape()
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"hyperlet_cri_requests_total", map[string]string{"method": "RunPodSandbox", "code": "OK"}, 2},
		{"hyperlet_cri_requests_total", map[string]string{"method": "RunPodSandbox", "code": "InvalidArgument"}, 1},
		{"hyperlet_cri_request_duration_seconds", map[string]string{"method": "RunPodSandbox"}, 3},
		{"hyperlet_pod_start_duration_seconds", nil, 2},
		{"hyperlet_pods", map[string]string{"state": "SANDBOX_READY"}, 2},
		{"hyperlet_containers", map[string]string{"state": "CONTAINER_RUNNING"}, 1},
		{"hyperlet_accelerator_info", map[string]string{"accelerator": string(resolveAccel(t))}, 1},
		{"hyperlet_image_pulls_total", map[string]string{"registry": "registry.k8s.io", "result": "success"}, 1},
	} {
		if got, _ := value(fams, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if buckets := fams["hyperlet_pod_start_duration_seconds"].GetMetric(); len(buckets) == 0 || len(buckets[0].GetHistogram().GetBucket()) < 5 {
		t.Errorf("pod start histogram: %v", buckets)
	}
	if starts, _ := value(fams, "hyperlet_vm_start_duration_seconds", nil); starts < 2 {
		t.Errorf("VM starts observed: %v, want at least the 2 pods' VMs", starts)
	}
	// Each step of the start calls is timed: both pods', the container's.
	for _, c := range []struct {
		call, phase string
		want        float64
	}{
		{"RunPodSandbox", "queue", 2}, {"RunPodSandbox", "network", 2}, {"RunPodSandbox", "vm", 2}, {"RunPodSandbox", "setup", 2}, {"RunPodSandbox", "record", 2},
		{"CreateContainer", "image", 1}, {"CreateContainer", "attach", 1}, {"CreateContainer", "guest", 1}, {"CreateContainer", "record", 1},
		{"StartContainer", "queue", 1}, {"StartContainer", "guest", 1}, {"StartContainer", "record", 1},
	} {
		if got, _ := value(fams, "hyperlet_start_phase_duration_seconds", map[string]string{"call": c.call, "phase": c.phase}); got < c.want {
			t.Errorf("%s %s steps timed: %v, want at least %v", c.call, c.phase, got, c.want)
		}
	}
	if _, n := value(fams, "hyperlet_pool_takes_total", nil); n != 2 {
		t.Errorf("pool takes: %d series, want hit and miss", n)
	}
	podA := map[string]string{"pod": "metrics-a", "namespace": "default", "uid": "metrics-a-uid"}
	if cpu, n := value(fams, "hyperlet_pod_vm_cpu_seconds_total", podA); n != 1 || cpu <= 0 {
		t.Errorf("VM CPU of pod a: %v (%d series)", cpu, n)
	}
	if pss, n := value(fams, "hyperlet_pod_vm_memory_pss_bytes", podA); n != 1 || pss < 8<<20 {
		t.Errorf("VM PSS of pod a: %v (%d series)", pss, n)
	}
	if disk, n := value(fams, "hyperlet_pod_image_disk_bytes", podA); n != 1 || disk < 256<<10 {
		t.Errorf("image disk bytes of pod a (a busybox container): %v (%d series)", disk, n)
	}
	if disk, n := value(fams, "hyperlet_pod_image_disk_bytes", map[string]string{"pod": "metrics-b"}); n != 1 || disk != 0 {
		t.Errorf("image disk bytes of pod b (no container): %v (%d series)", disk, n)
	}
	if paused, n := value(fams, "hyperlet_pod_vm_paused", podA); n != 1 || paused != 0 {
		t.Errorf("pod a paused: %v (%d series)", paused, n)
	}
	spin := map[string]string{"pod": "metrics-a", "container": "spin"}
	cpu1, n := value(fams, "hyperlet_container_cpu_seconds_total", spin)
	if n != 1 {
		t.Fatalf("container CPU series: %d", n)
	}
	time.Sleep(3 * time.Second)
	if cpu2, _ := value(scrape(), "hyperlet_container_cpu_seconds_total", spin); cpu2 <= cpu1 {
		t.Errorf("a spinning container's CPU did not rise: %v then %v", cpu1, cpu2)
	}

	// A removed pod's series go with it.
	if _, err := d.rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pa}); err != nil {
		t.Fatal(err)
	}
	fams = scrape()
	for _, name := range []string{"hyperlet_pod_vm_cpu_seconds_total", "hyperlet_container_cpu_seconds_total"} {
		if _, n := value(fams, name, map[string]string{"pod": "metrics-a"}); n != 0 {
			t.Errorf("%s of a removed pod still reported (%d series)", name, n)
		}
	}
	if got, _ := value(fams, "hyperlet_pods", map[string]string{"state": "SANDBOX_READY"}); got != 1 {
		t.Errorf("ready pods after a removal: %v", got)
	}
	if _, err := d.rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pb}); err != nil {
		t.Fatal(err)
	}
}
