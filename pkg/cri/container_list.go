package cri

import (
	"context"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// ListContainers lists containers, filtered by ID (or prefix), pod, state
// and labels.
func (s *Service) ListContainers(ctx context.Context, r *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	f := r.GetFilter()
	resp := &runtimeapi.ListContainersResponse{}
	for _, c := range s.ctrs.Containers() {
		if f.GetId() != "" && !strings.HasPrefix(c.ID(), f.GetId()) {
			continue
		}
		if f.GetPodSandboxId() != "" && !strings.HasPrefix(c.PodID(), f.GetPodSandboxId()) {
			continue
		}
		st := containerStatus(c)
		if f.GetState() != nil && f.GetState().State != st.State {
			continue
		}
		if !matchLabels(st.Labels, f.GetLabelSelector()) {
			continue
		}
		resp.Containers = append(resp.Containers, &runtimeapi.Container{
			Id: st.Id, PodSandboxId: c.PodID(), Metadata: st.Metadata, Image: st.Image,
			ImageRef: st.ImageRef, ImageId: st.ImageId, State: st.State, CreatedAt: st.CreatedAt,
			Labels: st.Labels, Annotations: st.Annotations,
		})
	}
	if h, ok := hostList(s, "containers", func(h Host) (*runtimeapi.ListContainersResponse, error) { return h.ListContainers(ctx, r) }); ok {
		resp.Containers = append(resp.Containers, h.Containers...)
	}
	return resp, nil
}
