package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
	"github.com/hyperlet/hyperlet/pkg/agent"
)

// maxExecOutput bounds what ExecSync collects per stream (kubelet's own
// probe output limit is far lower).
const maxExecOutput = 16 << 20

// ErrExecTimeout is returned when ExecSync's command outlives its timeout.
var ErrExecTimeout = errors.New("exec timed out")

// ExecResult is the outcome of ExecSync.
type ExecResult struct {
	Stdout, Stderr []byte
	ExitCode       int32
}

// ExecSync runs cmd in a running container and collects its output. With a
// timeout, the command is killed when it runs out and ErrExecTimeout is
// returned.
func (m *Manager) ExecSync(ctx context.Context, id string, cmd []string, timeout time.Duration) (*ExecResult, error) {
	proc, err := m.startExec(ctx, id, cmd, false, false)
	if err != nil {
		return nil, err
	}
	defer endProcess(proc)
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	var stdout, stderr limitedBuffer
	stdout.max, stderr.max = maxExecOutput, maxExecOutput
	copied := copyOutputs(ctx, proc, &stdout, &stderr, false)
	st, err := proc.Wait(ctx)
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) && timeout > 0 {
			return nil, fmt.Errorf("command %q in %s: %w after %v", cmd, id, ErrExecTimeout, timeout)
		}
		return nil, err
	}
	copied.Wait()
	return &ExecResult{Stdout: stdout.Bytes(), Stderr: stderr.Bytes(), ExitCode: st.ExitCode}, nil
}

// startExec starts cmd in a running container through the agent.
func (m *Manager) startExec(ctx context.Context, id string, cmd []string, tty, stdin bool) (*agent.Process, error) {
	if len(cmd) == 0 {
		return nil, fmt.Errorf("%w: empty command", ErrInvalid)
	}
	c, client, err := m.runningContainer(id)
	if err != nil {
		return nil, err
	}
	c.pod.syncMounts(ctx)
	// A guest that stopped answering must not hold the caller forever.
	ctx, cancel := context.WithTimeout(ctx, execStartTimeout)
	defer cancel()
	execID := "exec-" + newID()[:24]
	proc, err := client.Exec(ctx, c.ID(), execID, &specs.Process{Args: cmd, Terminal: tty}, stdin, 0, 0)
	if err != nil {
		// The guest may have started it all the same (a start that ran
		// out of time): it must not run on unwatched.
		endProcess(client.Process(execID))
		return nil, err
	}
	return proc, nil
}

// Bounds on the agent calls around an exec: starting it (runc exec is
// slow under TCG) and ending it.
const (
	execStartTimeout = 30 * time.Second
	execEndTimeout   = 5 * time.Second
	// agentCallTimeout bounds a quick agent call (a signal, a removal).
	agentCallTimeout = 10 * time.Second
)

// endProcess kills an exec'd process that still runs (its caller gave up
// or went away) and frees it in the agent, within execEndTimeout.
func endProcess(proc *agent.Process) {
	ctx, cancel := context.WithTimeout(context.Background(), execEndTimeout)
	defer cancel()
	// One short wait tells an exited process from a running one.
	wctx, wcancel := context.WithTimeout(ctx, 100*time.Millisecond)
	_, err := proc.Wait(wctx)
	wcancel()
	if err != nil {
		proc.Signal(ctx, 9)
		proc.Wait(ctx)
	}
	proc.Remove(ctx)
}

// copyOutputs copies a process's stdout to out and, without a tty, its
// stderr to errw (nil writers discard); the group is done when both ended.
func copyOutputs(ctx context.Context, proc *agent.Process, out, errw io.Writer, tty bool) *sync.WaitGroup {
	var wg sync.WaitGroup
	copyOut := func(s agentapi.Stream, w io.Writer) {
		defer wg.Done()
		if w == nil {
			w = io.Discard
		}
		proc.CopyOutput(ctx, s, 0, w)
	}
	wg.Add(1)
	go copyOut(agentapi.Stream_STDOUT, out)
	if !tty {
		wg.Add(1)
		go copyOut(agentapi.Stream_STDERR, errw)
	}
	return &wg
}

// Running reports whether a container is running in a ready pod, the
// condition for exec and attach.
func (m *Manager) Running(id string) error {
	_, _, err := m.runningContainer(id)
	return err
}

func (m *Manager) runningContainer(id string) (*Container, *agent.Client, error) {
	c, err := m.Container(id)
	if err != nil {
		return nil, nil, err
	}
	if st := c.Status().State; st != runtime.ContainerState_CONTAINER_RUNNING {
		return nil, nil, fmt.Errorf("container %s is %s, not running: %w", id, st, ErrNotReady)
	}
	client, err := c.pod.client()
	if err != nil {
		return nil, nil, err
	}
	return c, client, nil
}

// limitedBuffer keeps the first max bytes and drops the rest.
type limitedBuffer struct {
	bytes.Buffer
	max int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.Len(); room > 0 {
		b.Buffer.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}
