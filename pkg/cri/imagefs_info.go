package cri

import (
	"context"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func (s *Service) ImageFsInfo(ctx context.Context, _ *runtimeapi.ImageFsInfoRequest) (*runtimeapi.ImageFsInfoResponse, error) {
	u, err := s.images.Usage()
	if err != nil {
		return nil, err
	}
	fs := &runtimeapi.FilesystemUsage{
		Timestamp:  u.Timestamp.UnixNano(),
		FsId:       &runtimeapi.FilesystemIdentifier{Mountpoint: u.Mountpoint},
		UsedBytes:  &runtimeapi.UInt64Value{Value: u.Bytes},
		InodesUsed: &runtimeapi.UInt64Value{Value: u.Inodes},
	}
	resp := &runtimeapi.ImageFsInfoResponse{ImageFilesystems: []*runtimeapi.FilesystemUsage{fs}}
	// Images pulled into containerd for host pods count too.
	if h, ok := hostList(s, "image filesystems", func(h Host) (*runtimeapi.ImageFsInfoResponse, error) {
		return h.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
	}); ok {
		resp.ImageFilesystems = append(resp.ImageFilesystems, h.ImageFilesystems...)
		resp.ContainerFilesystems = append(resp.ContainerFilesystems, h.ContainerFilesystems...)
	}
	return resp, nil
}
