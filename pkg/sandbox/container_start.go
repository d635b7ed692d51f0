package sandbox

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
	"github.com/hyperlet/hyperlet/pkg/agent"
	"github.com/hyperlet/hyperlet/pkg/crilog"
	"github.com/hyperlet/hyperlet/pkg/failpoint"
)

// StartContainer starts a created container.
func (m *Manager) StartContainer(ctx context.Context, id string) error {
	ph := m.phases("StartContainer")
	c, client, err := m.lockContainer(id)
	if err != nil {
		return err
	}
	defer c.op.Unlock()
	c.mu.Lock()
	if c.rec.State != runtime.ContainerState_CONTAINER_CREATED {
		defer c.mu.Unlock()
		return fmt.Errorf("container %s is %s, not created: %w", c.rec.ID, c.rec.State, ErrNotReady)
	}
	logPath := c.rec.LogPath
	c.mu.Unlock()
	c.pod.syncMounts(ctx)
	var log *crilog.File
	if logPath != "" {
		if log, err = crilog.Open(logPath); err != nil {
			return err
		}
	}
	if err := m.ctrStarts.enter(ctx); err != nil {
		if log != nil {
			log.Close()
		}
		return err
	}
	defer m.ctrStarts.leave()
	ph.done("queue")
	// The intent goes first: a daemon killed during the start asks the
	// guest, on restart, whether the container runs.
	c.mu.Lock()
	c.rec.Intent = IntentStart
	if err = c.persistLocked(); err != nil {
		c.rec.Intent = ""
		err = fmt.Errorf("persist container: %w", err)
	}
	c.mu.Unlock()
	if err == nil {
		err = failpoint.Hit("start-container:before-guest")
	}
	if err == nil {
		if err = m.hooks.StartContainer(ctx, c.pod, c); err != nil {
			err = fmt.Errorf("NRI StartContainer: %w", err)
		}
	}
	if err != nil {
		c.mu.Lock()
		c.rec.Intent = ""
		c.logPersistLocked()
		c.mu.Unlock()
		if log != nil {
			log.Close()
		}
		return err
	}
	ph.done("prepare")
	proc, err := client.StartContainer(ctx, c.rec.ID, c.cfg.GetStdin())
	ph.done("guest")
	if err == nil {
		err = failpoint.Hit("start-container:before-record")
	}
	c.mu.Lock()
	c.rec.Intent = ""
	if err != nil {
		if log != nil {
			log.Close()
		}
		c.rec.State = runtime.ContainerState_CONTAINER_EXITED
		c.rec.FinishedAt = time.Now().UnixNano()
		c.rec.ExitCode, c.rec.Reason, c.rec.Message = 128, "StartError", err.Error()
		c.logPersistLocked()
		c.mu.Unlock()
		return err
	}
	c.rec.State = runtime.ContainerState_CONTAINER_RUNNING
	c.rec.StartedAt = time.Now().UnixNano()
	c.rec.Pid = proc.Pid
	c.logPersistLocked()
	c.log, c.proc, c.done = log, proc, make(chan struct{})
	// STARTED is published before the monitor can publish STOPPED.
	m.eventLocked(c, runtime.ContainerEventType_CONTAINER_STARTED_EVENT)
	go m.monitor(c, proc, log, false)
	c.mu.Unlock()
	ph.done("record")
	if err := m.hooks.PostStartContainer(ctx, c.pod, c); err != nil {
		klog.ErrorS(err, "NRI PostStartContainer", "container", c.rec.ID)
	}
	return nil
}

// logPersistLocked writes the record, logging a failure: the state in
// memory stays the truth until the next write.
func (c *Container) logPersistLocked() {
	if err := c.persistLocked(); err != nil {
		klog.ErrorS(err, "persist container", "container", c.rec.ID, "state", c.rec.State)
	}
}

// monitor copies a running container's output to its log and records its
// exit. resume is set for containers taken over after a daemon restart.
func (m *Manager) monitor(c *Container, proc *agent.Process, log *crilog.File, resume bool) {
	ctx := context.Background()
	var wg sync.WaitGroup
	streams := []agentapi.Stream{agentapi.Stream_STDOUT}
	if !c.cfg.GetTty() {
		streams = append(streams, agentapi.Stream_STDERR)
	}
	for _, s := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := teeCloser{attached: c.outs[s]}
			if log != nil {
				w.log = log.Stream(streamNames[s])
			}
			var err error
			if resume {
				_, err = proc.ResumeOutput(ctx, s, w)
			} else {
				_, err = proc.CopyOutput(ctx, s, 0, w)
			}
			w.Close()
			if err != nil {
				klog.V(2).InfoS("container output ended", "container", c.rec.ID, "stream", s, "err", err)
			}
		}()
	}
	st, err := proc.Wait(ctx)
	logsDone := make(chan struct{})
	go func() { wg.Wait(); close(logsDone) }()
	select {
	case <-logsDone:
	case <-time.After(10 * time.Second):
		klog.InfoS("container output still open after exit (a child holds it)", "container", c.rec.ID)
	}

	c.mu.Lock()
	c.rec.State = runtime.ContainerState_CONTAINER_EXITED
	switch {
	case err != nil:
		c.rec.FinishedAt = time.Now().UnixNano()
		c.rec.ExitCode, c.rec.Reason = 255, "Error"
		c.rec.Message = fmt.Sprintf("lost the container: %v", err)
	default:
		c.rec.FinishedAt = st.ExitedAtUnixNano
		c.rec.ExitCode = st.ExitCode
		switch {
		case st.OomKilled:
			c.rec.Reason = "OOMKilled"
		case st.ExitCode == 0:
			c.rec.Reason = "Completed"
		default:
			c.rec.Reason = "Error"
		}
	}
	c.logPersistLocked()
	done := c.done
	code, reason := c.rec.ExitCode, c.rec.Reason
	m.eventLocked(c, runtime.ContainerEventType_CONTAINER_STOPPED_EVENT)
	c.mu.Unlock()
	if log != nil {
		log.Close()
	}
	// The plugins hear of the exit before a stop or removal returns.
	if err := m.hooks.StopContainer(ctx, c.pod, c); err != nil {
		klog.ErrorS(err, "NRI StopContainer", "container", c.rec.ID)
	}
	close(done)
	klog.InfoS("container exited", "container", c.rec.ID, "code", code, "reason", reason)
}

// streamNames are the CRI log's stream names, by agentapi.Stream.
var streamNames = [2]string{agentapi.Stream_STDOUT: "stdout", agentapi.Stream_STDERR: "stderr"}

// teeCloser writes to attached clients and to the log, if there is one.
type teeCloser struct {
	log      io.WriteCloser
	attached io.Writer
}

func (t teeCloser) Write(p []byte) (int, error) {
	t.attached.Write(p)
	if t.log == nil {
		return len(p), nil
	}
	return t.log.Write(p)
}

func (t teeCloser) Close() error {
	if t.log == nil {
		return nil
	}
	return t.log.Close()
}
