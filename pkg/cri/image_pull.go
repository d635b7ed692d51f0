package cri

import (
	"context"
	"fmt"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hyperlet/hyperlet/pkg/imageservice"
)

func (s *Service) PullImage(ctx context.Context, r *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
	if r.GetImage().GetImage() == "" {
		return nil, fmt.Errorf("pull image: no image: %w", errInvalid)
	}
	var auth *imageservice.Auth
	if a := r.GetAuth(); a != nil {
		auth = &imageservice.Auth{Username: a.Username, Password: a.Password, Auth: a.Auth,
			IdentityToken: a.IdentityToken, RegistryToken: a.RegistryToken}
	}
	start := time.Now()
	img, err := s.images.Pull(ctx, r.Image.Image, auth)
	if err != nil {
		s.observe.ObservePull(r.Image.Image, 0, 0, err)
		return nil, err
	}
	s.observe.ObservePull(r.Image.Image, int64(img.Size), time.Since(start), nil)
	if s.host != nil {
		// Kept for a host pod's container, which containerd pulls itself.
		s.host.Remember(append([]string{r.Image.Image}, append(img.RepoDigests, img.RepoTags...)...), r.GetAuth())
	}
	return &runtimeapi.PullImageResponse{ImageRef: img.ID.String()}, nil
}
