package sandbox

import (
	"context"
	"errors"
	"strings"
	"testing"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hyperlet/hyperlet/pkg/vm"
)

// pausableVM records pause and resume calls and fails them on demand.
type pausableVM struct {
	vm.VM
	pauseErr, resumeErr error
	calls               []string
}

func (v *pausableVM) Pause(context.Context) error {
	v.calls = append(v.calls, "pause")
	return v.pauseErr
}

func (v *pausableVM) Resume(context.Context) error {
	v.calls = append(v.calls, "resume")
	return v.resumeErr
}

// plainVM cannot pause.
type plainVM struct{ vm.VM }

func TestPausePod(t *testing.T) {
	boom := errors.New("qmp failed")
	for _, tc := range []struct {
		name        string
		vm          vm.VM
		state       runtime.PodSandboxState
		pauseWant   error
		wantPaused  bool
		resumeWant  error
		wantCalls   []string
		pausedAfter bool
	}{
		{name: "pause and resume", vm: &pausableVM{}, state: runtime.PodSandboxState_SANDBOX_READY,
			wantPaused: true, wantCalls: []string{"pause", "resume"}},
		{name: "pause fails: undone, not paused", vm: &pausableVM{pauseErr: boom}, state: runtime.PodSandboxState_SANDBOX_READY,
			pauseWant: boom, wantCalls: []string{"pause", "resume"}},
		{name: "pause and its undo fail: stays paused", vm: &pausableVM{pauseErr: boom, resumeErr: boom}, state: runtime.PodSandboxState_SANDBOX_READY,
			pauseWant: boom, wantPaused: true, resumeWant: boom, wantCalls: []string{"pause", "resume", "resume"}, pausedAfter: true},
		{name: "resume fails: still paused", vm: &pausableVM{resumeErr: boom}, state: runtime.PodSandboxState_SANDBOX_READY,
			wantPaused: true, resumeWant: boom, wantCalls: []string{"pause", "resume"}, pausedAfter: true},
		{name: "stopped pod", vm: &pausableVM{}, state: runtime.PodSandboxState_SANDBOX_NOTREADY,
			pauseWant: ErrNotReady},
		{name: "hypervisor cannot pause", vm: plainVM{}, state: runtime.PodSandboxState_SANDBOX_READY,
			pauseWant: ErrUnsupported},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newTestManager(t, &fakeNetwork{})
			p := &Pod{m: m, cfg: &runtime.PodSandboxConfig{}, rec: podRecord{ID: "p1", State: tc.state}, vm: tc.vm}
			m.mu.Lock()
			m.pods[p.ID()] = p
			m.mu.Unlock()
			ctx := context.Background()
			if err := m.PausePod(ctx, "p1"); !errors.Is(err, tc.pauseWant) {
				t.Fatalf("PausePod = %v, want %v", err, tc.pauseWant)
			}
			if p.Paused() != tc.wantPaused {
				t.Fatalf("paused = %v, want %v", p.Paused(), tc.wantPaused)
			}
			if tc.wantPaused {
				if _, err := p.client(); !errors.Is(err, ErrPaused) || !errors.Is(err, ErrNotReady) {
					t.Errorf("client of a paused pod = %v, want ErrPaused", err)
				}
				// Paused twice is paused once.
				if err := m.PausePod(ctx, "p1"); err != nil {
					t.Errorf("PausePod again = %v", err)
				}
				recorded := false
				if err := each(m.db, podsBucket, func(r *podRecord) { recorded = r.ID == "p1" && r.Paused }); err != nil || !recorded {
					t.Errorf("record not paused (%v)", err)
				}
				if err := m.ResumePod(ctx, "p1"); !errors.Is(err, tc.resumeWant) {
					t.Fatalf("ResumePod = %v, want %v", err, tc.resumeWant)
				}
				if p.Paused() != tc.pausedAfter {
					t.Errorf("paused after resume = %v, want %v", p.Paused(), tc.pausedAfter)
				}
			}
			if pv, ok := tc.vm.(*pausableVM); ok && len(tc.wantCalls) > 0 {
				if strings.Join(pv.calls, " ") != strings.Join(tc.wantCalls, " ") {
					t.Errorf("calls %v, want %v", pv.calls, tc.wantCalls)
				}
			}
			if err := m.ResumePod(ctx, "nope"); !errors.Is(err, ErrNotFound) {
				t.Errorf("ResumePod of a missing pod = %v, want ErrNotFound", err)
			}
		})
	}
}

func TestPauseRefusedWhileStopping(t *testing.T) {
	m := newTestManager(t, &fakeNetwork{})
	v := &pausableVM{}
	p := &Pod{m: m, cfg: &runtime.PodSandboxConfig{}, rec: podRecord{ID: "p1", State: runtime.PodSandboxState_SANDBOX_READY}, vm: v, stopping: true}
	m.mu.Lock()
	m.pods[p.ID()] = p
	m.mu.Unlock()
	if err := m.PausePod(context.Background(), "p1"); !errors.Is(err, ErrNotReady) || len(v.calls) != 0 {
		t.Errorf("PausePod of a stopping pod = %v (calls %v), want ErrNotReady and no QMP", err, v.calls)
	}
}
