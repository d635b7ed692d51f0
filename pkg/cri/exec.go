package cri

import (
	"context"
	"fmt"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Exec returns the streaming URL of a command to run in a running container.
func (s *Service) Exec(ctx context.Context, r *runtimeapi.ExecRequest) (*runtimeapi.ExecResponse, error) {
	if len(r.Cmd) == 0 {
		return nil, fmt.Errorf("%w: empty command", errInvalid)
	}
	if !r.Stdout && !r.Stderr && !r.Stdin {
		return nil, fmt.Errorf("%w: one of stdin, stdout and stderr is required", errInvalid)
	}
	if s.hostContainer(r.ContainerId) {
		return s.host.Exec(ctx, r) // containerd's own streaming URL
	}
	if err := s.requireRunning(r.ContainerId); err != nil {
		return nil, err
	}
	return s.streamer.GetExec(r)
}

func (s *Service) requireRunning(id string) error {
	if s.streamer == nil {
		return fmt.Errorf("streaming server: %w", errUnavailable)
	}
	return s.procs.Running(id)
}
