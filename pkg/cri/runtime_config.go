package cri

import (
	"context"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"
)

// RuntimeConfig tells kubelet the cgroup driver to match. hyperlet puts each
// pod's VM under its own cgroups itself (cgroupfs).
func (s *Service) RuntimeConfig(ctx context.Context, _ *runtimeapi.RuntimeConfigRequest) (*runtimeapi.RuntimeConfigResponse, error) {
	return &runtimeapi.RuntimeConfigResponse{
		Linux: &runtimeapi.LinuxRuntimeConfiguration{CgroupDriver: runtimeapi.CgroupDriver_CGROUPFS},
	}, nil
}

// UpdateRuntimeConfig accepts kubelet's pod CIDR; pod addresses come from
// the CNI configuration, so there is nothing to change.
func (s *Service) UpdateRuntimeConfig(ctx context.Context, r *runtimeapi.UpdateRuntimeConfigRequest) (*runtimeapi.UpdateRuntimeConfigResponse, error) {
	if s.host != nil {
		// The pod CIDR matters to the host runtime's CNI; ours is the CNI
		// configuration's.
		if _, err := s.host.UpdateRuntimeConfig(ctx, r); err != nil {
			klog.ErrorS(err, "host runtime: update runtime config")
		}
	}
	return &runtimeapi.UpdateRuntimeConfigResponse{}, nil
}
