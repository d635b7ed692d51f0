package cri

import (
	"context"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// RemovePodSandbox removes the pod and its containers; a missing pod is no error.
func (s *Service) RemovePodSandbox(ctx context.Context, r *runtimeapi.RemovePodSandboxRequest) (*runtimeapi.RemovePodSandboxResponse, error) {
	if s.hostPod(r.PodSandboxId) {
		return idempotent(s.host.RemovePodSandbox(ctx, r))
	}
	if err := s.pods.RemovePod(ctx, r.PodSandboxId); err != nil {
		return nil, err
	}
	return &runtimeapi.RemovePodSandboxResponse{}, nil
}
