package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hyperlet/hyperlet/pkg/sandbox"
)

type noPods struct{}

func (noPods) Pods() []*sandbox.Pod { return nil }
func (noPods) VMStatus() sandbox.VMStatus {
	return sandbox.VMStatus{Pool: sandbox.PoolStatus{Hits: 3, Misses: 1, Ready: 2}, PodStarts: sandbox.GateStatus{Running: 1, Waiting: 4}}
}
func (noPods) PodContainers(string) []*sandbox.Container { return nil }
func (noPods) ContainerStats(context.Context, string, bool) (*sandbox.ContainerStats, error) {
	return nil, errors.New("none")
}

func TestUnaryAndPulls(t *testing.T) {
	m := New()
	m.Watch(noPods{}, nil, nil, func() string { return "tcg" })
	info := &grpc.UnaryServerInfo{FullMethod: "/runtime.v1.RuntimeService/RunPodSandbox"}
	for _, err := range []error{nil, nil, status.Error(codes.InvalidArgument, "bad")} {
		m.Unary(context.Background(), nil, info, func(context.Context, any) (any, error) { return nil, err })
	}
	for _, tc := range []struct {
		code string
		want float64
	}{{"OK", 2}, {"InvalidArgument", 1}, {"NotFound", 0}} {
		if got := testutil.ToFloat64(m.requests.WithLabelValues("RunPodSandbox", tc.code)); got != tc.want {
			t.Errorf("requests{code=%s} = %v, want %v", tc.code, got, tc.want)
		}
	}
	m.ObservePull("busybox", 100, time.Second, nil)
	m.ObservePull("registry.k8s.io/pause:3.10", 50, time.Second, nil)
	m.ObservePull("registry.k8s.io/nope:1", 0, 0, errors.New("not found"))
	for _, tc := range []struct {
		registry, result string
		want             float64
	}{{"index.docker.io", "success", 1}, {"registry.k8s.io", "success", 1}, {"registry.k8s.io", "failure", 1}} {
		if got := testutil.ToFloat64(m.pulls.WithLabelValues(tc.registry, tc.result)); got != tc.want {
			t.Errorf("pulls{%s,%s} = %v, want %v", tc.registry, tc.result, got, tc.want)
		}
	}
	if got := testutil.ToFloat64(m.pullBytes.WithLabelValues("registry.k8s.io")); got != 50 {
		t.Errorf("pull bytes = %v", got)
	}
	if n, err := testutil.GatherAndCount(m.reg, "hyperlet_accelerator_info"); err != nil || n != 1 {
		t.Errorf("accelerator info: %d %v", n, err)
	}
	m.ObserveVMStart("template", 150*time.Millisecond)
	want := `
# HELP hyperlet_pool_takes_total Pod starts that looked for a warm VM, by result (hit or miss).
# TYPE hyperlet_pool_takes_total counter
hyperlet_pool_takes_total{result="hit"} 3
hyperlet_pool_takes_total{result="miss"} 1
# HELP hyperlet_pool_ready_vms Warm VMs ready for pods.
# TYPE hyperlet_pool_ready_vms gauge
hyperlet_pool_ready_vms 2
# HELP hyperlet_start_queue Starts in flight and waiting, by queue (pod or container).
# TYPE hyperlet_start_queue gauge
hyperlet_start_queue{queue="container",state="running"} 0
hyperlet_start_queue{queue="container",state="waiting"} 0
hyperlet_start_queue{queue="pod",state="running"} 1
hyperlet_start_queue{queue="pod",state="waiting"} 4
`
	if err := testutil.GatherAndCompare(m.reg, strings.NewReader(want), "hyperlet_pool_takes_total", "hyperlet_pool_ready_vms", "hyperlet_start_queue"); err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndCount(m.reg, "hyperlet_vm_start_duration_seconds"); err != nil || n != 1 {
		t.Errorf("VM start histogram series: %d %v", n, err)
	}
}

// TestDashboard checks that the Grafana dashboard in deploy/ queries only
// metrics this package exports.
func TestDashboard(t *testing.T) {
	raw, err := os.ReadFile("../../deploy/grafana/hyperlet-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	m := New()
	ch := make(chan *prometheus.Desc, 256)
	for _, c := range []prometheus.Collector{m.requests, m.latency, m.podStarts, m.vmStarts, m.phases, m.pulls, m.pullBytes, m.pullLatency,
		&nodeCollector{}, &usageCollector{}} {
		c.Describe(ch)
	}
	close(ch)
	known := map[string]bool{}
	fq := regexp.MustCompile(`fqName: "([a-z_]+)"`)
	for d := range ch {
		if mm := fq.FindStringSubmatch(d.String()); mm != nil {
			known[mm[1]] = true
		}
	}
	name := regexp.MustCompile(`hyperlet_[a-z_]+`)
	queries := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			queries++
			for _, n := range name.FindAllString(tg.Expr, -1) {
				base := n
				for _, suffix := range []string{"_bucket", "_count", "_sum"} {
					base = strings.TrimSuffix(base, suffix)
				}
				if !known[n] && !known[base] {
					t.Errorf("panel %q queries %s, which hyperlet does not export", p.Title, n)
				}
			}
		}
	}
	if queries < 10 {
		t.Errorf("the dashboard has %d queries", queries)
	}
}
