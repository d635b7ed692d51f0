package agent

import (
	"context"
	"errors"
	"fmt"
	"io"

	"golang.org/x/sync/errgroup"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
)

// chunk is how much one stdin write or output read carries.
const chunk = 256 << 10

// ProcessSpec describes a process to start in the guest.
type ProcessSpec = agentapi.StartProcessRequest

// ExitStatus is how a guest process ended.
type ExitStatus = agentapi.WaitProcessResponse

// Process is a process started in the guest.
type Process struct {
	c   *Client
	ID  string
	Pid uint32
}

// Start starts a process. spec.Stdin must be set for Stdin to be usable.
func (c *Client) Start(ctx context.Context, spec *ProcessSpec) (*Process, error) {
	svc, _ := c.service()
	resp, err := svc.StartProcess(ctx, spec)
	if err != nil {
		return nil, wrap("start process", err)
	}
	return &Process{c: c, ID: spec.Id, Pid: resp.Pid}, nil
}

// Process returns a handle on a process started earlier, possibly by
// another client (a daemon before its restart).
func (c *Client) Process(id string) *Process { return &Process{c: c, ID: id} }

// CopyOutput copies one output stream to w until it ends, starting at stream
// offset off. It returns the offset reached, so a caller can resume.
func (p *Process) CopyOutput(ctx context.Context, s agentapi.Stream, off uint64, w io.Writer) (uint64, error) {
	return p.copyOutput(ctx, s, off, false, w)
}

// ResumeOutput is CopyOutput from the oldest byte the agent still holds, for
// a host that does not know how far its predecessor copied. Bytes copied
// but not yet acknowledged before a restart are copied again.
func (p *Process) ResumeOutput(ctx context.Context, s agentapi.Stream, w io.Writer) (uint64, error) {
	return p.copyOutput(ctx, s, 0, true, w)
}

func (p *Process) copyOutput(ctx context.Context, s agentapi.Stream, off uint64, resume bool, w io.Writer) (uint64, error) {
	for {
		resp, err := call(ctx, p.c, "read output", func(svc agentapi.AgentService) (*agentapi.ReadOutputResponse, error) {
			return svc.ReadOutput(ctx, &agentapi.ReadOutputRequest{Id: p.ID, Stream: s, Offset: off, MaxBytes: chunk, Resume: resume})
		})
		if err != nil {
			return off, err
		}
		if resume {
			off, resume = resp.Offset, false
		}
		if len(resp.Data) > 0 {
			if _, err := w.Write(resp.Data); err != nil {
				return off, fmt.Errorf("copy %s of %s: %w", s, p.ID, err)
			}
			off += uint64(len(resp.Data))
		}
		if resp.Eof {
			return off, nil
		}
	}
}

// CopyStdin copies r to the process's stdin, then closes it.
func (p *Process) CopyStdin(ctx context.Context, r io.Reader) error {
	buf := make([]byte, chunk)
	var off uint64
	for {
		n, rerr := r.Read(buf)
		var err error
		if off, err = p.WriteStdin(ctx, off, buf[:n]); err != nil {
			return err
		}
		if errors.Is(rerr, io.EOF) {
			return p.CloseStdin(ctx)
		}
		if rerr != nil {
			return fmt.Errorf("read stdin for %s: %w", p.ID, rerr)
		}
	}
}

// WriteStdin writes data as the stdin bytes from stream offset off on and
// returns the offset after them. Retries after a reconnect never duplicate
// input: the agent skips bytes it already has.
func (p *Process) WriteStdin(ctx context.Context, off uint64, data []byte) (uint64, error) {
	start := off
	for off < start+uint64(len(data)) {
		o := off
		resp, err := call(ctx, p.c, "write stdin", func(svc agentapi.AgentService) (*agentapi.WriteStdinResponse, error) {
			return svc.WriteStdin(ctx, &agentapi.WriteStdinRequest{Id: p.ID, Offset: o, Data: data[o-start:]})
		})
		if err != nil {
			return off, err
		}
		off = resp.Offset
	}
	return off, nil
}

// OpenPort connects to port on the pod's localhost inside the VM. The
// returned Process carries the connection: WriteStdin/CopyStdin send,
// CopyOutput(STDOUT) receives, CloseStdin half-closes.
func (c *Client) OpenPort(ctx context.Context, id string, port uint32) (*Process, error) {
	svc, _ := c.service()
	if _, err := svc.OpenPort(ctx, &agentapi.OpenPortRequest{Id: id, Port: port}); err != nil {
		return nil, wrap("open port", err)
	}
	return &Process{c: c, ID: id}, nil
}

// CloseStdin closes the process's stdin (sends ^D on a tty).
func (p *Process) CloseStdin(ctx context.Context) error {
	_, err := call(ctx, p.c, "close stdin", func(svc agentapi.AgentService) (*agentapi.Empty, error) {
		return svc.CloseStdin(ctx, &agentapi.CloseStdinRequest{Id: p.ID})
	})
	return err
}

// Signal sends a signal to the process.
func (p *Process) Signal(ctx context.Context, sig uint32) error {
	_, err := call(ctx, p.c, "signal", func(svc agentapi.AgentService) (*agentapi.Empty, error) {
		return svc.SignalProcess(ctx, &agentapi.SignalProcessRequest{Id: p.ID, Signal: sig})
	})
	return err
}

// Resize sets the size of the process's terminal.
func (p *Process) Resize(ctx context.Context, rows, cols uint32) error {
	_, err := call(ctx, p.c, "resize tty", func(svc agentapi.AgentService) (*agentapi.Empty, error) {
		return svc.ResizeTty(ctx, &agentapi.ResizeTtyRequest{Id: p.ID, Rows: rows, Cols: cols})
	})
	return err
}

// Wait waits for the process to exit.
func (p *Process) Wait(ctx context.Context) (*ExitStatus, error) {
	return call(ctx, p.c, "wait", func(svc agentapi.AgentService) (*ExitStatus, error) {
		return svc.WaitProcess(ctx, &agentapi.WaitProcessRequest{Id: p.ID})
	})
}

// Remove frees an exited process's state in the agent.
func (p *Process) Remove(ctx context.Context) error {
	_, err := call(ctx, p.c, "remove process", func(svc agentapi.AgentService) (*agentapi.Empty, error) {
		return svc.RemoveProcess(ctx, &agentapi.RemoveProcessRequest{Id: p.ID})
	})
	return err
}

// Run starts a process, feeds it stdin (if not nil), copies its output until
// both streams end, waits for it and removes it.
func (c *Client) Run(ctx context.Context, spec *ProcessSpec, stdin io.Reader, stdout, stderr io.Writer) (*ExitStatus, error) {
	spec.Stdin = stdin != nil
	p, err := c.Start(ctx, spec)
	if err != nil {
		return nil, err
	}
	var g errgroup.Group
	if stdin != nil {
		// Input errors (a process that exits without reading) do not fail
		// the run; its exit status tells.
		go p.CopyStdin(ctx, stdin)
	}
	g.Go(func() error { _, err := p.CopyOutput(ctx, agentapi.Stream_STDOUT, 0, orDiscard(stdout)); return err })
	g.Go(func() error { _, err := p.CopyOutput(ctx, agentapi.Stream_STDERR, 0, orDiscard(stderr)); return err })
	st, werr := p.Wait(ctx)
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if werr != nil {
		return nil, werr
	}
	return st, p.Remove(ctx)
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}
