package cri

import (
	"context"
	"fmt"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Attach returns the streaming URL that connects to a running container's stdio.
func (s *Service) Attach(ctx context.Context, r *runtimeapi.AttachRequest) (*runtimeapi.AttachResponse, error) {
	if !r.Stdout && !r.Stderr && !r.Stdin {
		return nil, fmt.Errorf("%w: one of stdin, stdout and stderr is required", errInvalid)
	}
	if s.hostContainer(r.ContainerId) {
		return s.host.Attach(ctx, r) // containerd's own streaming URL
	}
	if err := s.requireRunning(r.ContainerId); err != nil {
		return nil, err
	}
	return s.streamer.GetAttach(r)
}
