package cri

import (
	"context"
	"fmt"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"
)

// RemoveImage succeeds for an image that is already gone.
func (s *Service) RemoveImage(ctx context.Context, r *runtimeapi.RemoveImageRequest) (*runtimeapi.RemoveImageResponse, error) {
	if r.GetImage().GetImage() == "" {
		return nil, fmt.Errorf("remove image: no image: %w", errInvalid)
	}
	var refs []string
	if img, err := s.images.Get(r.Image.Image); err == nil {
		refs = append(append(refs, img.RepoDigests...), img.RepoTags...)
	}
	if err := s.images.Remove(r.Image.Image); err != nil {
		return nil, err
	}
	// A copy pulled into containerd for a host pod goes too (kubelet's
	// image GC sees only hyperlet's image service).
	if s.host != nil {
		for _, ref := range refs {
			if _, err := s.host.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err != nil {
				klog.V(2).InfoS("host runtime: remove image", "image", ref, "err", err)
			}
		}
	}
	return &runtimeapi.RemoveImageResponse{}, nil
}
