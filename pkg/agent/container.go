package agent

import (
	"context"
	"encoding/json"
	"fmt"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
)

// PodSetup is the pod identity SetupPod applies.
type PodSetup = agentapi.SetupPodRequest

// ContainerStats is a container's usage as the guest's cgroups report it.
type ContainerStats = agentapi.ContainerStatsResponse

// SetupPod applies the pod's hostname, files and sysctls. It is idempotent.
func (c *Client) SetupPod(ctx context.Context, p *PodSetup) error {
	_, err := call(ctx, c, "setup pod", func(s agentapi.AgentService) (*agentapi.Empty, error) {
		return s.SetupPod(ctx, p)
	})
	return err
}

// MountImage mounts the image disk at SCSI target:lun under imageID.
func (c *Client) MountImage(ctx context.Context, imageID string, target, lun uint32) error {
	_, err := call(ctx, c, "mount image", func(s agentapi.AgentService) (*agentapi.Empty, error) {
		return s.MountImage(ctx, &agentapi.MountImageRequest{ImageId: imageID, ScsiTarget: target, ScsiLun: lun, Fstype: "erofs"})
	})
	return err
}

// ContainerCreate is what CreateContainer asks of the guest.
type ContainerCreate struct {
	ID, ImageID string
	// User is "user[:group]", resolved against the image; StrictGroups
	// leaves out the groups the image's /etc/group gives that user.
	User         string
	StrictGroups bool
	Spec         *specs.Spec
	// ImageVolumes are mounted after the spec's mounts.
	ImageVolumes []*agentapi.ImageVolume
}

// maxGroups bounds the groups a guest may report for a container (Linux's
// NGROUPS_MAX).
const maxGroups = 65536

// CreateContainer prepares a container from a mounted image and an OCI spec.
// It returns the identity its process runs with, as the guest resolved it.
func (c *Client) CreateContainer(ctx context.Context, r ContainerCreate) (specs.User, error) {
	b, err := json.Marshal(r.Spec)
	if err != nil {
		return specs.User{}, fmt.Errorf("encode spec: %w", err)
	}
	svc, _ := c.service()
	resp, err := svc.CreateContainer(ctx, &agentapi.CreateContainerRequest{
		Id: r.ID, ImageId: r.ImageID, Spec: b, User: r.User, StrictGroups: r.StrictGroups, ImageVolumes: r.ImageVolumes,
	})
	if err != nil {
		return specs.User{}, wrap("create container", err)
	}
	if len(resp.AdditionalGids) > maxGroups {
		return specs.User{}, &GuestError{Op: "create container", Code: codes.Internal, Message: fmt.Sprintf("reported %d groups", len(resp.AdditionalGids))}
	}
	return specs.User{UID: resp.Uid, GID: resp.Gid, AdditionalGids: resp.AdditionalGids}, nil
}

// StartContainer starts a created container; its process has the
// container's ID.
func (c *Client) StartContainer(ctx context.Context, id string, stdin bool) (*Process, error) {
	svc, _ := c.service()
	resp, err := svc.StartContainer(ctx, &agentapi.StartContainerRequest{Id: id, Stdin: stdin})
	if err != nil {
		return nil, wrap("start container", err)
	}
	return &Process{c: c, ID: id, Pid: resp.Pid}, nil
}

// Exec runs proc in a running container under execID.
func (c *Client) Exec(ctx context.Context, containerID, execID string, proc *specs.Process, stdin bool, rows, cols uint32) (*Process, error) {
	b, err := json.Marshal(proc)
	if err != nil {
		return nil, fmt.Errorf("encode process: %w", err)
	}
	svc, _ := c.service()
	resp, err := svc.ExecProcess(ctx, &agentapi.ExecProcessRequest{
		ContainerId: containerID, ExecId: execID, Process: b, Stdin: stdin, Rows: rows, Cols: cols,
	})
	if err != nil {
		return nil, wrap("exec", err)
	}
	return &Process{c: c, ID: execID, Pid: resp.Pid}, nil
}

// UpdateContainer sets new cgroup limits on a running container.
func (c *Client) UpdateContainer(ctx context.Context, id string, r *specs.LinuxResources) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode resources: %w", err)
	}
	_, err = call(ctx, c, "update container", func(s agentapi.AgentService) (*agentapi.Empty, error) {
		return s.UpdateContainer(ctx, &agentapi.UpdateContainerRequest{Id: id, Resources: b})
	})
	return err
}

// RemoveContainer kills and frees a container; a missing one is no error.
func (c *Client) RemoveContainer(ctx context.Context, id string) error {
	_, err := call(ctx, c, "remove container", func(s agentapi.AgentService) (*agentapi.Empty, error) {
		return s.RemoveContainer(ctx, &agentapi.RemoveContainerRequest{Id: id})
	})
	return err
}

// Stats reads a container's usage; openFiles also counts its processes'
// open files and sockets, which costs the guest a walk of /proc.
func (c *Client) Stats(ctx context.Context, id string, openFiles bool) (*ContainerStats, error) {
	return call(ctx, c, "container stats", func(s agentapi.AgentService) (*agentapi.ContainerStatsResponse, error) {
		return s.ContainerStats(ctx, &agentapi.ContainerStatsRequest{Id: id, OpenFiles: openFiles})
	})
}
