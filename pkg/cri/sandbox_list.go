package cri

import (
	"context"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// ListPodSandbox lists pods, filtered by ID (or prefix), state and labels.
func (s *Service) ListPodSandbox(ctx context.Context, r *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	f := r.GetFilter()
	resp := &runtimeapi.ListPodSandboxResponse{}
	for _, p := range s.pods.Pods() {
		if f.GetId() != "" && !strings.HasPrefix(p.ID(), f.GetId()) {
			continue
		}
		st := podStatus(p)
		if f.GetState() != nil && f.GetState().State != st.State {
			continue
		}
		if !matchLabels(st.Labels, f.GetLabelSelector()) {
			continue
		}
		resp.Items = append(resp.Items, &runtimeapi.PodSandbox{
			Id: st.Id, Metadata: st.Metadata, State: st.State, CreatedAt: st.CreatedAt,
			Labels: st.Labels, Annotations: st.Annotations, RuntimeHandler: st.RuntimeHandler,
		})
	}
	if h, ok := hostList(s, "pods", func(h Host) (*runtimeapi.ListPodSandboxResponse, error) { return h.ListPodSandbox(ctx, r) }); ok {
		resp.Items = append(resp.Items, h.Items...)
	}
	return resp, nil
}
