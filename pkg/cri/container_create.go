package cri

import (
	"context"
	"fmt"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// CreateContainer prepares a container in its pod's VM.
func (s *Service) CreateContainer(ctx context.Context, r *runtimeapi.CreateContainerRequest) (*runtimeapi.CreateContainerResponse, error) {
	if r.GetConfig() == nil {
		return nil, fmt.Errorf("%w: container config is required", errInvalid)
	}
	c, err := s.ctrs.CreateContainer(ctx, r.PodSandboxId, r.Config)
	if err != nil {
		return nil, err
	}
	return &runtimeapi.CreateContainerResponse{ContainerId: c.ID()}, nil
}
