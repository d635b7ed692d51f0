package cri

import (
	"context"
	"fmt"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// PortForward returns the streaming URL that forwards to ports on the pod's
// localhost; connections are made inside the pod VM.
func (s *Service) PortForward(ctx context.Context, r *runtimeapi.PortForwardRequest) (*runtimeapi.PortForwardResponse, error) {
	if s.hostPod(r.PodSandboxId) {
		return s.host.PortForward(ctx, r) // containerd's own streaming URL
	}
	if s.streamer == nil {
		return nil, fmt.Errorf("streaming server: %w", errUnavailable)
	}
	p, err := s.pods.Pod(r.PodSandboxId)
	if err != nil {
		return nil, err
	}
	if st, _, _ := p.Snapshot(); st != runtimeapi.PodSandboxState_SANDBOX_READY {
		return nil, fmt.Errorf("pod %s is not ready: %w", r.PodSandboxId, errUnavailable)
	}
	for _, port := range r.Port {
		if port <= 0 || port > 65535 {
			return nil, fmt.Errorf("%w: port %d", errInvalid, port)
		}
	}
	return s.streamer.GetPortForward(r)
}
