package cri

import (
	"context"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// StopContainer sends SIGTERM, then SIGKILL after the timeout (seconds).
// Stopping a stopped or missing container succeeds.
func (s *Service) StopContainer(ctx context.Context, r *runtimeapi.StopContainerRequest) (*runtimeapi.StopContainerResponse, error) {
	if s.hostContainer(r.ContainerId) {
		return idempotent(s.host.StopContainer(ctx, r))
	}
	if err := s.ctrs.StopContainer(ctx, r.ContainerId, r.Timeout); err != nil {
		return nil, err
	}
	return &runtimeapi.StopContainerResponse{}, nil
}
