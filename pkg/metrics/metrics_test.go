package metrics

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hyperlet/hyperlet/pkg/sandbox"
)

type noPods struct{}

func (noPods) Pods() []*sandbox.Pod                      { return nil }
func (noPods) PodContainers(string) []*sandbox.Container { return nil }
func (noPods) ContainerStats(context.Context, string) (*sandbox.ContainerStats, error) {
	return nil, errors.New("none")
}

func TestUnaryAndPulls(t *testing.T) {
	m := New(noPods{}, nil, func() string { return "tcg" })
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
}
