package cri

import (
	"context"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// StartContainer starts a created container.
func (s *Service) StartContainer(ctx context.Context, r *runtimeapi.StartContainerRequest) (*runtimeapi.StartContainerResponse, error) {
	if s.hostContainer(r.ContainerId) {
		return s.host.StartContainer(ctx, r)
	}
	if err := s.ctrs.StartContainer(ctx, r.ContainerId); err != nil {
		return nil, err
	}
	return &runtimeapi.StartContainerResponse{}, nil
}
