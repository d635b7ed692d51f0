package main

import (
	"context"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
)

// maxRead caps one ReadOutput reply, well under ttrpc's 4 MiB message limit.
const maxRead = 1 << 20

// service implements agentapi.AgentService.
type service struct {
	procs    *procTable
	ctrs     *containers
	shutdown func()
}

var _ agentapi.AgentService = (*service)(nil)

func (s *service) Version(ctx context.Context, _ *agentapi.VersionRequest) (*agentapi.VersionResponse, error) {
	var u unix.Utsname
	unix.Uname(&u)
	return &agentapi.VersionResponse{
		AgentVersion:  version,
		ApiRevision:   agentapi.APIRevision,
		KernelRelease: unix.ByteSliceToString(u.Release[:]),
	}, nil
}

func (s *service) StartProcess(ctx context.Context, req *agentapi.StartProcessRequest) (*agentapi.StartProcessResponse, error) {
	p, err := s.procs.start(req, nil)
	if err != nil {
		return nil, err
	}
	return &agentapi.StartProcessResponse{Pid: uint32(p.pid)}, nil
}

func (s *service) WriteStdin(ctx context.Context, req *agentapi.WriteStdinRequest) (*agentapi.WriteStdinResponse, error) {
	p, err := s.procs.get(req.Id)
	if err != nil {
		return nil, err
	}
	off, err := p.writeStdin(req.Offset, req.Data)
	return &agentapi.WriteStdinResponse{Offset: off}, err
}

func (s *service) CloseStdin(ctx context.Context, req *agentapi.CloseStdinRequest) (*agentapi.Empty, error) {
	p, err := s.procs.get(req.Id)
	if err != nil {
		return nil, err
	}
	if err := p.closeStdin(); err != nil {
		return nil, status.Errorf(codes.Internal, "close stdin: %v", err)
	}
	return &agentapi.Empty{}, nil
}

func (s *service) ReadOutput(ctx context.Context, req *agentapi.ReadOutputRequest) (*agentapi.ReadOutputResponse, error) {
	p, err := s.procs.get(req.Id)
	if err != nil {
		return nil, err
	}
	if req.Stream != agentapi.Stream_STDOUT && req.Stream != agentapi.Stream_STDERR {
		return nil, status.Errorf(codes.InvalidArgument, "unknown stream %d", req.Stream)
	}
	max := int(req.MaxBytes)
	if max <= 0 || max > maxRead {
		max = maxRead
	}
	off := req.Offset
	if req.Resume {
		off = resumeOffset
	}
	buf := p.out[req.Stream]
	data, eof, err := buf.read(ctx, off, max)
	if err != nil {
		return nil, err
	}
	if req.Resume {
		off = buf.start()
	}
	return &agentapi.ReadOutputResponse{Data: data, Eof: eof, Offset: off}, nil
}

func (s *service) ResizeTty(ctx context.Context, req *agentapi.ResizeTtyRequest) (*agentapi.Empty, error) {
	p, err := s.procs.get(req.Id)
	if err != nil {
		return nil, err
	}
	if p.tty == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "process %q has no tty", req.Id)
	}
	if err := pty.Setsize(p.tty, &pty.Winsize{Rows: uint16(req.Rows), Cols: uint16(req.Cols)}); err != nil {
		return nil, status.Errorf(codes.Internal, "resize tty: %v", err)
	}
	return &agentapi.Empty{}, nil
}

func (s *service) SignalProcess(ctx context.Context, req *agentapi.SignalProcessRequest) (*agentapi.Empty, error) {
	p, err := s.procs.get(req.Id)
	if err != nil {
		return nil, err
	}
	if req.Signal == 0 || req.Signal > 64 {
		return nil, status.Errorf(codes.InvalidArgument, "invalid signal %d", req.Signal)
	}
	if err := p.signal(unix.Signal(req.Signal)); err != nil {
		return nil, status.Errorf(codes.Internal, "signal %d: %v", req.Signal, err)
	}
	return &agentapi.Empty{}, nil
}

func (s *service) WaitProcess(ctx context.Context, req *agentapi.WaitProcessRequest) (*agentapi.WaitProcessResponse, error) {
	p, err := s.procs.get(req.Id)
	if err != nil {
		return nil, err
	}
	select {
	case <-p.exited:
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	return &agentapi.WaitProcessResponse{
		ExitCode:         p.status.code,
		Signal:           p.status.signal,
		ExitedAtUnixNano: p.status.at.UnixNano(),
		OomKilled:        p.status.oom,
	}, nil
}

func (s *service) RemoveProcess(ctx context.Context, req *agentapi.RemoveProcessRequest) (*agentapi.Empty, error) {
	s.procs.mu.Lock()
	p, ok := s.procs.byID[req.Id]
	if ok {
		select {
		case <-p.exited:
			delete(s.procs.byID, req.Id)
		default:
			s.procs.mu.Unlock()
			return nil, status.Errorf(codes.FailedPrecondition, "process %q is running", req.Id)
		}
	}
	s.procs.mu.Unlock()
	if ok {
		p.release()
	}
	return &agentapi.Empty{}, nil
}

func (s *service) Shutdown(ctx context.Context, _ *agentapi.ShutdownRequest) (*agentapi.Empty, error) {
	klog.InfoS("shutdown requested")
	s.procs.mu.Lock()
	for _, p := range s.procs.byID {
		p.signal(unix.SIGKILL)
	}
	s.procs.mu.Unlock()
	// Power off after the reply has left.
	time.AfterFunc(100*time.Millisecond, s.shutdown)
	return &agentapi.Empty{}, nil
}

func (s *service) SetGuestDateTime(ctx context.Context, req *agentapi.SetGuestDateTimeRequest) (*agentapi.Empty, error) {
	tv := unix.NsecToTimeval(req.UnixNano)
	if err := unix.Settimeofday(&tv); err != nil {
		return nil, status.Errorf(codes.Internal, "set time: %v", err)
	}
	return &agentapi.Empty{}, nil
}
