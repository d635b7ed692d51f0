// Package agent is hyperlet's client of the guest agent (api/agent/v1). It
// dials the unix socket QEMU exposes for the agent's virtio-serial port,
// performs the resynchronising handshake, and speaks ttrpc over it. When
// the connection drops it redials, and retries calls that are safe to repeat
// (every call but StartProcess and Shutdown carries enough state to be).
package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/containerd/ttrpc"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
)

// ErrUnavailable means the agent cannot be reached: the VM is gone or its
// agent does not answer.
var ErrUnavailable = errors.New("guest agent unavailable")

// handshakeTimeout bounds one connection attempt once the socket accepted.
const handshakeTimeout = 5 * time.Second

// Client is a connection to one VM's agent. It is safe for concurrent use.
type Client struct {
	socket string

	mu   sync.Mutex
	conn *ttrpc.Client
	svc  agentapi.AgentService
}

// Dial connects to the agent behind socket, retrying until ctx ends: a VM
// that is still booting has its socket up before its agent answers.
func Dial(ctx context.Context, socket string) (*Client, error) {
	c := &Client{socket: socket}
	if err := c.dial(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// dial connects, retrying until ctx ends.
func (c *Client) dial(ctx context.Context) error {
	for {
		err := c.connect(ctx)
		if err == nil {
			return nil
		}
		if errors.Is(err, fs.ErrNotExist) {
			// QEMU creates the socket before it is started; gone means the
			// VM is gone.
			return fmt.Errorf("dial agent %s: %w: %v", c.socket, ErrUnavailable, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("dial agent %s: %w: %v", c.socket, ErrUnavailable, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (c *Client) connect(ctx context.Context) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.socket)
	if err != nil {
		return err
	}
	dl := time.Now().Add(handshakeTimeout)
	if cdl, ok := ctx.Deadline(); ok && cdl.Before(dl) {
		dl = cdl
	}
	conn.SetDeadline(dl)
	n, err := agentapi.NewNonce()
	if err == nil {
		err = agentapi.WriteHello(conn, n)
	}
	if err == nil {
		err = agentapi.ReadReady(conn, n)
	}
	if err != nil {
		conn.Close()
		return fmt.Errorf("handshake: %w", err)
	}
	conn.SetDeadline(time.Time{})
	tc := ttrpc.NewClient(&framedConn{Conn: conn, fw: agentapi.FrameWriter{W: conn}})
	c.mu.Lock()
	old := c.conn
	c.conn, c.svc = tc, agentapi.NewAgentClient(tc)
	c.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

// Close closes the connection; the VM and its processes are unaffected.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return nil
	}
	return c.conn.Close()
}

func (c *Client) service() (agentapi.AgentService, *ttrpc.Client) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.svc, c.conn
}

// redialTimeout bounds reconnecting after a dropped connection.
const redialTimeout = 3 * time.Second

// call runs fn, and once more on a fresh connection if the connection was
// lost. fn must be safe to repeat.
func call[T any](ctx context.Context, c *Client, name string, fn func(agentapi.AgentService) (T, error)) (T, error) {
	svc, conn := c.service()
	res, err := fn(svc)
	if err == nil || !connectionLost(err) {
		return res, wrap(name, err)
	}
	// Reconnect unless another caller already has.
	c.mu.Lock()
	stale := c.conn == conn
	c.mu.Unlock()
	if stale {
		rctx, cancel := context.WithTimeout(ctx, redialTimeout)
		err := c.dial(rctx)
		cancel()
		if err != nil {
			var zero T
			return zero, fmt.Errorf("agent %s: connection lost, reconnect: %w", name, err)
		}
	}
	svc, _ = c.service()
	res, err = fn(svc)
	return res, wrap(name, err)
}

func connectionLost(err error) bool {
	return errors.Is(err, ttrpc.ErrClosed) || errors.Is(err, net.ErrClosed)
}

func wrap(name string, err error) error {
	if err == nil {
		return nil
	}
	if connectionLost(err) {
		return fmt.Errorf("agent %s: %w: %v", name, ErrUnavailable, err)
	}
	if st, ok := status.FromError(err); ok {
		// The guest chose this code: it is kept for the host to read
		// (GuestError.Code), never handed on as a gRPC status.
		return &GuestError{Op: name, Code: st.Code(), Message: st.Message()}
	}
	return fmt.Errorf("agent %s: %w", name, err)
}

// GuestError is an error the guest agent answered with. Its code is the
// guest's word, which the host may act on where a wrong one harms only the
// guest's own pod, but never passes to its callers: it has no GRPCStatus.
type GuestError struct {
	Op      string
	Code    codes.Code
	Message string
}

func (e *GuestError) Error() string { return fmt.Sprintf("agent %s: %s", e.Op, e.Message) }

// GuestCode returns the code of the guest's answer in err, or codes.OK if
// err is not one.
func GuestCode(err error) codes.Code {
	var ge *GuestError
	if errors.As(err, &ge) {
		return ge.Code
	}
	return codes.OK
}

// Version returns the agent's version; it is the agent health check.
func (c *Client) Version(ctx context.Context) (*agentapi.VersionResponse, error) {
	return call(ctx, c, "version", func(s agentapi.AgentService) (*agentapi.VersionResponse, error) {
		return s.Version(ctx, &agentapi.VersionRequest{})
	})
}

// Shutdown asks the agent to power the VM off. It is not retried: a lost
// connection may mean the VM is already going down.
func (c *Client) Shutdown(ctx context.Context) error {
	svc, _ := c.service()
	_, err := svc.Shutdown(ctx, &agentapi.ShutdownRequest{})
	return wrap("shutdown", err)
}

// Reconnect drops the current connection and dials a new one, retrying
// until ctx ends. Calls in flight on the old connection are retried on the
// new one.
func (c *Client) Reconnect(ctx context.Context) error {
	c.mu.Lock()
	old := c.conn
	c.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return c.dial(ctx)
}

// framedConn frames what the host writes (see api/agent/v1/channel.go).
type framedConn struct {
	net.Conn
	mu sync.Mutex
	fw agentapi.FrameWriter
}

func (c *framedConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fw.Write(p)
}

// SetTime sets the guest's wall clock to t.
// AddEntropy mixes data into the guest's random pool and reseeds its CRNG.
func (c *Client) AddEntropy(ctx context.Context, data []byte) error {
	_, err := call(ctx, c, "add entropy", func(s agentapi.AgentService) (*agentapi.Empty, error) {
		return s.AddEntropy(ctx, &agentapi.AddEntropyRequest{Data: data})
	})
	return err
}

func (c *Client) SetTime(ctx context.Context, t time.Time) error {
	_, err := call(ctx, c, "set time", func(s agentapi.AgentService) (*agentapi.Empty, error) {
		return s.SetGuestDateTime(ctx, &agentapi.SetGuestDateTimeRequest{UnixNano: t.UnixNano()})
	})
	return err
}
