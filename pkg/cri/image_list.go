package cri

import (
	"context"
	"errors"
	"strconv"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hyperlet/hyperlet/pkg/imageservice"
)

func (s *Service) ListImages(ctx context.Context, r *runtimeapi.ListImagesRequest) (*runtimeapi.ListImagesResponse, error) {
	var imgs []*imageservice.Image
	if ref := r.GetFilter().GetImage().GetImage(); ref != "" {
		img, err := s.images.Get(ref)
		if errors.Is(err, imageservice.ErrNotFound) {
			return &runtimeapi.ListImagesResponse{}, nil
		}
		if err != nil {
			return nil, err
		}
		imgs = append(imgs, img)
	} else {
		var err error
		if imgs, err = s.images.List(); err != nil {
			return nil, err
		}
	}
	resp := &runtimeapi.ListImagesResponse{}
	for _, img := range imgs {
		resp.Images = append(resp.Images, toCRIImage(img))
	}
	return resp, nil
}

// toCRIImage converts a record; the image config's User gives Uid (numeric)
// or Username.
func toCRIImage(img *imageservice.Image) *runtimeapi.Image {
	out := &runtimeapi.Image{
		Id:          img.ID.String(),
		RepoTags:    img.RepoTags,
		RepoDigests: img.RepoDigests,
		Size:        img.Size,
		Spec:        &runtimeapi.ImageSpec{Image: img.ID.String()},
	}
	user, _, _ := strings.Cut(img.User, ":")
	if uid, err := strconv.ParseInt(user, 10, 64); err == nil {
		out.Uid = &runtimeapi.Int64Value{Value: uid}
	} else {
		out.Username = user
	}
	return out
}
