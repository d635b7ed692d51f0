package cri

import (
	"context"
	"fmt"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// RemoveImage succeeds for an image that is already gone.
func (s *Service) RemoveImage(ctx context.Context, r *runtimeapi.RemoveImageRequest) (*runtimeapi.RemoveImageResponse, error) {
	if r.GetImage().GetImage() == "" {
		return nil, fmt.Errorf("remove image: no image: %w", errInvalid)
	}
	if err := s.images.Remove(r.Image.Image); err != nil {
		return nil, err
	}
	return &runtimeapi.RemoveImageResponse{}, nil
}
