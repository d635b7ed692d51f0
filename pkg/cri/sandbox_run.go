package cri

import (
	"context"
	"fmt"
	"slices"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hyperlet/hyperlet/pkg/oci"
)

// RunPodSandbox boots the pod's VM.
func (s *Service) RunPodSandbox(ctx context.Context, r *runtimeapi.RunPodSandboxRequest) (*runtimeapi.RunPodSandboxResponse, error) {
	if r.GetConfig() == nil {
		return nil, fmt.Errorf("%w: pod config is required", errInvalid)
	}
	if s.host != nil && s.host.Wants(r.Config, r.RuntimeHandler) {
		if oci.PodUserns(r.Config) {
			return nil, fmt.Errorf("%w: user namespaces are not offered for host pods", errInvalid)
		}
		return s.host.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: r.Config, RuntimeHandler: s.host.Handler(r.RuntimeHandler)})
	}
	if h := r.RuntimeHandler; h != "" && !slices.Contains(s.handlers, h) {
		return nil, fmt.Errorf("%w: runtime handler %q is not configured", errInvalid, h)
	}
	start := time.Now()
	p, err := s.pods.RunPod(ctx, r.Config, r.RuntimeHandler)
	if err != nil {
		return nil, err
	}
	s.observe.ObservePodStart(p.Boot(), time.Since(start))
	return &runtimeapi.RunPodSandboxResponse{PodSandboxId: p.ID()}, nil
}
