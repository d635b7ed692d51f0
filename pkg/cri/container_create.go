package cri

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// CreateContainer prepares a container in its pod's VM.
func (s *Service) CreateContainer(ctx context.Context, r *runtimeapi.CreateContainerRequest) (*runtimeapi.CreateContainerResponse, error) {
	if r.GetConfig() == nil {
		return nil, fmt.Errorf("%w: container config is required", errInvalid)
	}
	if s.hostPod(r.PodSandboxId) {
		return s.createHostContainer(ctx, r)
	}
	c, err := s.ctrs.CreateContainer(ctx, r.PodSandboxId, r.Config)
	if err != nil {
		return nil, err
	}
	return &runtimeapi.CreateContainerResponse{ContainerId: c.ID()}, nil
}

// createHostContainer creates a container of a host pod in containerd,
// with the image pulled through hyperlet made available there first.
func (s *Service) createHostContainer(ctx context.Context, r *runtimeapi.CreateContainerRequest) (*runtimeapi.CreateContainerResponse, error) {
	if r.Config.GetLinux().GetSecurityContext().GetSupplementalGroupsPolicy() == runtimeapi.SupplementalGroupsPolicy_Strict {
		return nil, fmt.Errorf("%w: SupplementalGroupsPolicy Strict is not offered for host pods", errInvalid)
	}
	ref := r.Config.GetImage().GetImage()
	refs := []string{ref}
	if s.images != nil {
		if img, err := s.images.Get(ref); err == nil {
			// kubelet names the image by the ID PullImage returned: pull
			// it into containerd by the names hyperlet pulled it by.
			refs = append(append([]string{}, img.RepoDigests...), img.RepoTags...)
		}
	}
	name, err := s.host.EnsureImage(ctx, refs, r.SandboxConfig)
	if err != nil {
		return nil, err
	}
	req := proto.Clone(r).(*runtimeapi.CreateContainerRequest)
	req.Config.Image = &runtimeapi.ImageSpec{Image: name}
	return s.host.CreateContainer(ctx, req)
}
