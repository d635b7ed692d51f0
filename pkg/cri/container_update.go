package cri

import (
	"context"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// UpdateContainerResources changes a container's CPU and memory limits.
func (s *Service) UpdateContainerResources(ctx context.Context, r *runtimeapi.UpdateContainerResourcesRequest) (*runtimeapi.UpdateContainerResourcesResponse, error) {
	if s.hostContainer(r.ContainerId) {
		return s.host.UpdateContainerResources(ctx, r)
	}
	if err := s.ctrs.UpdateResources(ctx, r.ContainerId, r.Linux); err != nil {
		return nil, err
	}
	return &runtimeapi.UpdateContainerResourcesResponse{}, nil
}
