package cri

import (
	"context"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// ReopenContainerLog reopens a running container's log after kubelet rotated it.
func (s *Service) ReopenContainerLog(ctx context.Context, r *runtimeapi.ReopenContainerLogRequest) (*runtimeapi.ReopenContainerLogResponse, error) {
	if s.hostContainer(r.ContainerId) {
		return s.host.ReopenContainerLog(ctx, r)
	}
	if err := s.ctrs.ReopenLog(r.ContainerId); err != nil {
		return nil, err
	}
	return &runtimeapi.ReopenContainerLogResponse{}, nil
}
