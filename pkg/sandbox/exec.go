package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
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
	if len(cmd) == 0 {
		return nil, fmt.Errorf("%w: empty command", ErrInvalid)
	}
	c, err := m.Container(id)
	if err != nil {
		return nil, err
	}
	if st := c.Status().State; st != runtime.ContainerState_CONTAINER_RUNNING {
		return nil, fmt.Errorf("container %s is %s, not running: %w", id, st, ErrNotReady)
	}
	client, err := c.pod.client()
	if err != nil {
		return nil, err
	}
	execID := "exec-" + newID()[:24]
	proc, err := client.Exec(ctx, c.ID(), execID, &specs.Process{Args: cmd}, false, 0, 0)
	if err != nil {
		return nil, err
	}
	defer proc.Remove(context.Background())
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	var stdout, stderr limitedBuffer
	stdout.max, stderr.max = maxExecOutput, maxExecOutput
	errc := make(chan error, 2)
	go func() { _, err := proc.CopyOutput(ctx, agentapi.Stream_STDOUT, 0, &stdout); errc <- err }()
	go func() { _, err := proc.CopyOutput(ctx, agentapi.Stream_STDERR, 0, &stderr); errc <- err }()
	st, err := proc.Wait(ctx)
	if err != nil {
		if ctx.Err() != nil {
			proc.Signal(context.Background(), 9)
			proc.Wait(context.Background())
			if errors.Is(ctx.Err(), context.DeadlineExceeded) && timeout > 0 {
				return nil, fmt.Errorf("command %q in %s: %w after %v", cmd, id, ErrExecTimeout, timeout)
			}
		}
		return nil, err
	}
	for range 2 {
		<-errc
	}
	return &ExecResult{Stdout: stdout.Bytes(), Stderr: stderr.Bytes(), ExitCode: st.ExitCode}, nil
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
