package main

import (
	"context"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
)

// halfCloser is a connection's stdin: closing it shuts down the write side
// only, so the peer's reply still comes back.
type halfCloser struct{ c *net.TCPConn }

func (h halfCloser) Write(b []byte) (int, error) { return h.c.Write(b) }
func (h halfCloser) Close() error                { return h.c.CloseWrite() }

// openPort dials localhost:port in the VM (the pod's network namespace) and
// registers the connection as a process of the table.
func (t *procTable) openPort(ctx context.Context, req *agentapi.OpenPortRequest) error {
	if err := validID(req.Id); err != nil {
		return err
	}
	if req.Port == 0 || req.Port > 65535 {
		return status.Errorf(codes.InvalidArgument, "invalid port %d", req.Port)
	}
	d := net.Dialer{Timeout: 5 * time.Second}
	var conn net.Conn
	var err error
	for _, host := range []string{"127.0.0.1", "::1"} {
		if conn, err = d.DialContext(ctx, "tcp", net.JoinHostPort(host, fmt.Sprint(req.Port))); err == nil {
			break
		}
	}
	if err != nil {
		return status.Errorf(codes.Unavailable, "connect to port %d in the pod: %v", req.Port, err)
	}
	tcp := conn.(*net.TCPConn)
	p := &process{id: req.Id, exited: make(chan struct{}), conn: conn, stdin: halfCloser{tcp}}
	p.out[agentapi.Stream_STDOUT] = newOutBuf(outputLimit)
	p.out[agentapi.Stream_STDERR] = newOutBuf(outputLimit)
	p.out[agentapi.Stream_STDERR].close()
	t.mu.Lock()
	if _, dup := t.byID[req.Id]; dup {
		t.mu.Unlock()
		conn.Close()
		return status.Errorf(codes.AlreadyExists, "process %q already exists", req.Id)
	}
	t.byID[req.Id] = p
	t.mu.Unlock()
	go func() {
		p.out[agentapi.Stream_STDOUT].fill(conn)
		conn.Close()
		p.status = exitStatus{at: time.Now()}
		close(p.exited)
	}()
	return nil
}

func (s *service) OpenPort(ctx context.Context, req *agentapi.OpenPortRequest) (*agentapi.Empty, error) {
	return &agentapi.Empty{}, s.procs.openPort(ctx, req)
}
