package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	remotecommandserver "k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
	"github.com/hyperlet/hyperlet/pkg/agent"
)

// The streaming calls (kubelet's streaming server, k8s.io/cri-streaming)
// land here: Exec and PortForward run in the guest through the agent, Attach
// joins a running container's output fan-out and stdin.

// fanout copies a container's output stream to the attached clients. It
// never blocks the container's log copier: each client has its own queue
// and writer, and a client that falls attachQueue writes behind is cut off.
type fanout struct {
	mu   sync.Mutex
	next int
	ws   map[int]*attached
}

// attachQueue is how many output chunks a slow attached client may lag.
const attachQueue = 256

type attached struct {
	ch   chan []byte
	done chan struct{} // closed when the writer goroutine has returned
	cut  chan struct{} // closed when the client fell too far behind
}

func (f *fanout) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for id, a := range f.ws {
		select {
		case a.ch <- bytes.Clone(p):
		default:
			close(a.ch) // too far behind: its stream ends here
			close(a.cut)
			delete(f.ws, id)
		}
	}
	return len(p), nil
}

// add attaches w; remove detaches it, waiting (a bounded time) until
// nothing more is written to w. cut is closed if w is cut off.
func (f *fanout) add(w io.Writer) (remove func(), cut <-chan struct{}) {
	a := &attached{ch: make(chan []byte, attachQueue), done: make(chan struct{}), cut: make(chan struct{})}
	go func() {
		defer close(a.done)
		failed := false
		for b := range a.ch {
			if !failed {
				_, err := w.Write(b)
				failed = err != nil // a client that went away: drain
			}
		}
	}()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ws == nil {
		f.ws = map[int]*attached{}
	}
	id := f.next
	f.next++
	f.ws[id] = a
	return func() {
		f.mu.Lock()
		if f.ws[id] == a {
			close(a.ch)
			delete(f.ws, id)
		}
		f.mu.Unlock()
		select {
		case <-a.done:
		case <-time.After(5 * time.Second):
		}
	}, a.cut
}

func resizeLoop(ctx context.Context, p *agent.Process, resize <-chan remotecommandserver.TerminalSize) {
	for {
		select {
		case <-ctx.Done():
			return
		case sz, ok := <-resize:
			if !ok {
				return
			}
			if sz.Height > 0 && sz.Width > 0 {
				p.Resize(ctx, uint32(sz.Height), uint32(sz.Width))
			}
		}
	}
}

// Exec runs cmd in a container with the client's streams.
func (m *Manager) Exec(ctx context.Context, id string, cmd []string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommandserver.TerminalSize) error {
	proc, err := m.startExec(ctx, id, cmd, tty, in != nil)
	if err != nil {
		return err
	}
	defer endProcess(proc) // a client that went away takes its process along
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if in != nil {
		go proc.CopyStdin(ctx, in)
	}
	if tty && resize != nil {
		go resizeLoop(ctx, proc, resize)
	}
	// The streaming server does not cancel ctx when a hijacked client
	// connection closes: a failed write to the client says it is gone.
	var stdout, stderr io.Writer
	if out != nil {
		stdout = &goneWriter{w: out, gone: cancel}
	}
	if errw != nil {
		stderr = &goneWriter{w: errw, gone: cancel}
	}
	copied := copyOutputs(ctx, proc, stdout, stderr, tty)
	st, err := proc.Wait(ctx)
	if err != nil {
		return err
	}
	copied.Wait()
	if st.ExitCode != 0 {
		return utilexec.CodeExitError{Err: fmt.Errorf("command %q exited with %d", cmd, st.ExitCode), Code: int(st.ExitCode)}
	}
	return nil
}

// goneWriter calls gone when a write to the client fails.
type goneWriter struct {
	w    io.Writer
	gone func()
}

func (g *goneWriter) Write(p []byte) (int, error) {
	n, err := g.w.Write(p)
	if err != nil {
		g.gone()
	}
	return n, err
}

// Attach connects the client to a running container's stdio until the
// container exits or the client leaves.
func (m *Manager) Attach(ctx context.Context, id string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommandserver.TerminalSize) error {
	c, _, err := m.runningContainer(id)
	if err != nil {
		return err
	}
	c.mu.Lock()
	proc, done := c.proc, c.done
	c.mu.Unlock()
	if proc == nil {
		return fmt.Errorf("container %s has no process: %w", id, ErrNotReady)
	}
	// A client cut off for falling behind is told so: its attach ends.
	var outCut, errCut <-chan struct{}
	if out != nil {
		remove, cut := c.outs[agentapi.Stream_STDOUT].add(out)
		defer remove()
		outCut = cut
	}
	if errw != nil && !c.cfg.GetTty() {
		remove, cut := c.outs[agentapi.Stream_STDERR].add(errw)
		defer remove()
		errCut = cut
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if in != nil && c.cfg.GetStdin() {
		go c.attachStdin(ctx, proc, in)
	}
	if c.cfg.GetTty() && resize != nil {
		go resizeLoop(ctx, proc, resize)
	}
	select {
	case <-done:
	case <-ctx.Done():
	case <-outCut:
		return fmt.Errorf("attach to %s: the client fell behind the container's output and was cut off", id)
	case <-errCut:
		return fmt.Errorf("attach to %s: the client fell behind the container's output and was cut off", id)
	}
	return nil
}

// attachStdin feeds a client's input to the container. Clients share one
// stdin stream; with StdinOnce the stream closes when the first client's
// input ends.
func (c *Container) attachStdin(ctx context.Context, proc *agent.Process, in io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, rerr := in.Read(buf)
		if n > 0 {
			c.stdinMu.Lock()
			off, err := proc.WriteStdin(ctx, c.stdinOff, buf[:n])
			c.stdinOff = off
			c.stdinMu.Unlock()
			if err != nil {
				return
			}
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) && c.cfg.GetStdinOnce() {
				proc.CloseStdin(ctx)
			}
			return
		}
	}
}

// PortForward relays stream to port on the pod's localhost, inside the VM.
func (m *Manager) PortForward(ctx context.Context, podID string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	p, err := m.Pod(podID)
	if err != nil {
		return err
	}
	client, err := p.client()
	if err != nil {
		return err
	}
	if port <= 0 || port > 65535 {
		return fmt.Errorf("%w: port %d", ErrInvalid, port)
	}
	octx, ocancel := context.WithTimeout(ctx, agentCallTimeout)
	conn, err := client.OpenPort(octx, "pf-"+newID()[:24], uint32(port))
	ocancel()
	if err != nil {
		return err
	}
	defer endProcess(conn) // closes the guest's connection
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go conn.CopyStdin(ctx, stream)
	_, err = conn.CopyOutput(ctx, agentapi.Stream_STDOUT, 0, stream)
	return err
}
