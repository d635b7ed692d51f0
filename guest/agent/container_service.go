package main

import (
	"context"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
)

// startTimeout bounds how long runc may take to start a container (TCG is slow).
const startTimeout = 2 * time.Minute

func (s *service) SetupPod(ctx context.Context, req *agentapi.SetupPodRequest) (*agentapi.Empty, error) {
	return &agentapi.Empty{}, s.ctrs.setupPod(req)
}

func (s *service) MountImage(ctx context.Context, req *agentapi.MountImageRequest) (*agentapi.Empty, error) {
	return &agentapi.Empty{}, s.ctrs.mountImage(req)
}

func (s *service) CreateContainer(ctx context.Context, req *agentapi.CreateContainerRequest) (*agentapi.CreateContainerResponse, error) {
	u, err := s.ctrs.create(req)
	if err != nil {
		return nil, err
	}
	return &agentapi.CreateContainerResponse{Uid: u.UID, Gid: u.GID, AdditionalGids: u.AdditionalGids}, nil
}

func (s *service) StartContainer(ctx context.Context, req *agentapi.StartContainerRequest) (*agentapi.StartProcessResponse, error) {
	p, err := s.ctrs.start(s.procs, req)
	return s.started(ctx, p, err)
}

func (s *service) ExecProcess(ctx context.Context, req *agentapi.ExecProcessRequest) (*agentapi.StartProcessResponse, error) {
	p, err := s.ctrs.exec(s.procs, req)
	return s.started(ctx, p, err)
}

// started answers a runc start: the container process's pid once runc has
// started it.
func (s *service) started(ctx context.Context, p *process, err error) (*agentapi.StartProcessResponse, error) {
	if err != nil {
		return nil, err
	}
	pid, err := s.waitStarted(ctx, p)
	if err != nil {
		return nil, err
	}
	return &agentapi.StartProcessResponse{Pid: uint32(pid)}, nil
}

// waitStarted waits until runc has written the container process's pid
// file, or has failed. A failed start is forgotten and reported with runc's
// message.
func (s *service) waitStarted(ctx context.Context, p *process) (int, error) {
	deadline := time.NewTimer(startTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if pid, err := readPID(p.hooks.pidFile); err == nil && pid > 0 {
			return pid, nil
		}
		select {
		case <-p.exited:
			// A fast command can start and end between two looks at the
			// pid file, which goes at exit: the exit kept what it said.
			if pid := p.status.startedPID; pid > 0 {
				return pid, nil // started and already gone
			}
			msg := strings.TrimSpace(string(p.out[agentapi.Stream_STDERR].peek(4096)) + string(p.out[agentapi.Stream_STDOUT].peek(4096)))
			s.forget(p)
			return 0, status.Errorf(codes.FailedPrecondition, "runc: exit %d: %s", p.status.code, msg)
		case <-ctx.Done():
			return 0, status.FromContextError(ctx.Err()).Err()
		case <-deadline.C:
			p.os.Kill()
			return 0, status.Errorf(codes.DeadlineExceeded, "container process did not start within %v", startTimeout)
		case <-tick.C:
		}
	}
}

func (s *service) forget(p *process) {
	s.procs.mu.Lock()
	if s.procs.byID[p.id] == p {
		delete(s.procs.byID, p.id)
	}
	s.procs.mu.Unlock()
	p.release()
}

func (s *service) UpdateContainer(ctx context.Context, req *agentapi.UpdateContainerRequest) (*agentapi.Empty, error) {
	return &agentapi.Empty{}, s.ctrs.update(req)
}

func (s *service) RemoveContainer(ctx context.Context, req *agentapi.RemoveContainerRequest) (*agentapi.Empty, error) {
	if err := s.ctrs.remove(s.procs, req.Id); err != nil {
		return nil, err
	}
	if p, err := s.procs.get(req.Id); err == nil {
		s.forget(p)
	}
	klog.V(1).InfoS("container removed", "id", req.Id)
	return &agentapi.Empty{}, nil
}

func (s *service) ContainerStats(ctx context.Context, req *agentapi.ContainerStatsRequest) (*agentapi.ContainerStatsResponse, error) {
	return containerStats(req.Id, req.OpenFiles)
}
