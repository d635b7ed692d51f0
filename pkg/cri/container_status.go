package cri

import (
	"context"
	"encoding/json"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hyperlet/hyperlet/pkg/sandbox"
)

// ContainerStatus reports a container's state, exit and image.
func (s *Service) ContainerStatus(ctx context.Context, r *runtimeapi.ContainerStatusRequest) (*runtimeapi.ContainerStatusResponse, error) {
	if s.hostContainer(r.ContainerId) {
		return s.host.ContainerStatus(ctx, r)
	}
	c, err := s.ctrs.Container(r.ContainerId)
	if err != nil {
		return nil, err
	}
	resp := &runtimeapi.ContainerStatusResponse{Status: containerStatus(c)}
	if r.Verbose {
		st := c.Status()
		info, _ := json.Marshal(map[string]any{"pid": st.Pid, "podId": st.PodID, "config": c.Config()})
		resp.Info = map[string]string{"info": string(info)}
	}
	return resp, nil
}

func containerStatus(c *sandbox.Container) *runtimeapi.ContainerStatus {
	cfg := c.Config()
	st := c.Status()
	out := &runtimeapi.ContainerStatus{
		Id:          st.ID,
		Metadata:    cfg.GetMetadata(),
		State:       st.State,
		CreatedAt:   st.CreatedAt,
		StartedAt:   st.StartedAt,
		FinishedAt:  st.FinishedAt,
		ExitCode:    st.ExitCode,
		Image:       cfg.GetImage(),
		ImageRef:    st.ImageRef,
		ImageId:     st.ImageID,
		Reason:      st.Reason,
		Message:     st.Message,
		Labels:      cfg.GetLabels(),
		Annotations: cfg.GetAnnotations(),
		Mounts:      statusMounts(cfg.GetMounts(), st.VolumeImages),
		LogPath:     st.LogPath,
	}
	if u := st.User; u != nil {
		lu := &runtimeapi.LinuxContainerUser{Uid: int64(u.UID), Gid: int64(u.GID)}
		for _, g := range u.AdditionalGids {
			lu.SupplementalGroups = append(lu.SupplementalGroups, int64(g))
		}
		out.User = &runtimeapi.ContainerUser{Linux: lu}
	}
	if r := cfg.GetLinux().GetResources(); r != nil {
		out.Resources = &runtimeapi.ContainerResources{Linux: r}
	}
	return out
}

// statusMounts are the container's mounts, its image volumes naming the
// image each resolved to (ImageSpec.image_ref).
func statusMounts(ms []*runtimeapi.Mount, volumeImages []string) []*runtimeapi.Mount {
	out := make([]*runtimeapi.Mount, 0, len(ms))
	k := 0
	for _, m := range ms {
		if m.GetImage() != nil && k < len(volumeImages) {
			m = proto.Clone(m).(*runtimeapi.Mount)
			m.Image.ImageRef = volumeImages[k]
			k++
		}
		out = append(out, m)
	}
	return out
}
