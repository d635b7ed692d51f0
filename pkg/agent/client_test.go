package agent

import (
	"bytes"
	"context"
	"errors"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/containerd/ttrpc"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
)

// fakeAgent serves a scripted ReadOutput over a real ttrpc server, speaking
// the guest side of the channel on a unix socket, as QEMU's port would. It
// drops the connection after dropAfter replies, once.
type fakeAgent struct {
	agentapi.AgentService // methods the test does not use panic

	data      []byte
	mu        sync.Mutex
	replies   int
	dropAfter int
	drop      func()
	offsets   []uint64
}

func (f *fakeAgent) ReadOutput(ctx context.Context, req *agentapi.ReadOutputRequest) (*agentapi.ReadOutputResponse, error) {
	f.mu.Lock()
	f.replies++
	f.offsets = append(f.offsets, req.Offset)
	if f.replies == f.dropAfter {
		f.mu.Unlock()
		f.drop() // the reply is lost with the connection
		<-ctx.Done()
		return nil, ctx.Err()
	}
	f.mu.Unlock()
	if req.Offset >= uint64(len(f.data)) {
		return &agentapi.ReadOutputResponse{Eof: true}, nil
	}
	end := min(req.Offset+3, uint64(len(f.data)))
	return &agentapi.ReadOutputResponse{Data: f.data[req.Offset:end]}, nil
}

// guestConn is the guest end of the channel for one session.
type guestConn struct {
	net.Conn
	fr agentapi.FrameReader
}

func (g *guestConn) Read(p []byte) (int, error) { return g.fr.Read(p) }

type guestListener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *guestListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		n, err := agentapi.ReadHello(c)
		if err == nil {
			err = agentapi.WriteReady(c, n)
		}
		if err != nil {
			c.Close()
			continue
		}
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
		return &guestConn{Conn: c, fr: agentapi.FrameReader{R: c}}, nil
	}
}

func (l *guestListener) dropAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
}

func TestCopyOutputSurvivesDroppedConnection(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	gl := &guestListener{Listener: ln}
	fake := &fakeAgent{data: []byte("the quick brown fox"), dropAfter: 3, drop: gl.dropAll}
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	agentapi.RegisterAgentService(srv, fake)
	go srv.Serve(context.Background(), gl)
	t.Cleanup(func() { srv.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var out bytes.Buffer
	off, err := c.Process("p").CopyOutput(ctx, agentapi.Stream_STDOUT, 0, &out)
	if err != nil {
		t.Fatal(err)
	}
	if out.String() != "the quick brown fox" || off != uint64(out.Len()) {
		t.Fatalf("got %q (offset %d)", out.String(), off)
	}
	// The read whose reply was lost is asked again at the same offset.
	if want := []uint64{0, 3, 6, 6}; len(fake.offsets) < 4 || !slices.Equal(fake.offsets[:4], want) {
		t.Fatalf("offsets asked: %v, want prefix %v", fake.offsets, want)
	}
}

func TestDialMissingSocket(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := Dial(ctx, filepath.Join(t.TempDir(), "none.sock"))
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Dial = %v, want ErrUnavailable", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Dial waited for the deadline on a missing socket")
	}
}
