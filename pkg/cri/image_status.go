package cri

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hyperlet/hyperlet/pkg/imageservice"
)

// ImageStatus returns an empty response, not an error, for a missing image
// (kubelet pulls on that answer).
func (s *Service) ImageStatus(ctx context.Context, r *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	if r.GetImage().GetImage() == "" {
		return nil, fmt.Errorf("image status: no image: %w", errInvalid)
	}
	img, err := s.images.Get(r.Image.Image)
	if errors.Is(err, imageservice.ErrNotFound) {
		return &runtimeapi.ImageStatusResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	resp := &runtimeapi.ImageStatusResponse{Image: toCRIImage(img)}
	if r.Verbose {
		b, err := json.Marshal(img)
		if err != nil {
			return nil, err
		}
		resp.Info = map[string]string{"info": string(b)}
	}
	return resp, nil
}
