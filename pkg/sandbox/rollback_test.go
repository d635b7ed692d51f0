package sandbox

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hyperlet/hyperlet/pkg/cni"
	"github.com/hyperlet/hyperlet/pkg/vm"
)

// fakeNetwork fails Attach or Detach on demand and counts Detach calls.
type fakeNetwork struct {
	attachErr, detachErr error
	detaches             int
}

func (n *fakeNetwork) Ready() error { return nil }

func (n *fakeNetwork) Attach(_ context.Context, p cni.Pod, netns, hostTap string) (*cni.Attachment, error) {
	if n.attachErr != nil {
		return nil, n.attachErr
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	w.Close()
	return &cni.Attachment{Result: &cni.Result{}, Tap: &cni.Tap{File: r, MAC: "02:00:00:00:00:01"}}, nil
}

func (n *fakeNetwork) Detach(context.Context, cni.Pod, string) error {
	n.detaches++
	return n.detachErr
}

// noVMs is a hypervisor that starts nothing and finds nothing.
type noVMs struct{}

func (noVMs) Start(context.Context, vm.Config) (vm.VM, error) {
	return nil, errors.New("no VMs in unit tests")
}
func (noVMs) Attach(context.Context, vm.Config) (vm.VM, error) { return nil, vm.ErrNotRunning }
func (noVMs) Sweep(context.Context, string, func(string) bool) ([]string, error) {
	return nil, nil
}

func newTestManager(t *testing.T, n Network) *Manager {
	t.Helper()
	dir := t.TempDir()
	m, err := New(context.Background(), Config{
		Root:       filepath.Join(dir, "root"),
		SharedRoot: filepath.Join(dir, "shared"),
		VM: func(id string) vm.Config {
			return vm.Config{ID: id, Dir: filepath.Join(dir, "vms", id), VCPUs: 1, MemoryMiB: 128}
		},
		Accel:        func(context.Context) (vm.Accel, error) { return vm.AccelTCG, nil },
		Network:      n,
		MaxMemoryMiB: 1024,
	}, noVMs{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func records(t *testing.T, m *Manager) int {
	t.Helper()
	n := 0
	if err := each(m.db, podsBucket, func(*podRecord) { n++ }); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestRunPodRollback(t *testing.T) {
	addFailed := errors.New("CNI ADD failed")
	delFailed := errors.New("CNI DEL failed")
	for _, tc := range []struct {
		name      string
		net       *fakeNetwork
		wantKept  bool
		wantInErr string
	}{
		{"network fails, teardown works", &fakeNetwork{attachErr: addFailed}, false, "CNI ADD failed"},
		{"network and teardown fail", &fakeNetwork{attachErr: addFailed, detachErr: delFailed}, true, "kept, not ready"},
		{"VM fails, teardown works", &fakeNetwork{}, false, "boot pod VM"},
		{"VM and teardown fail", &fakeNetwork{detachErr: delFailed}, true, "kept, not ready"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newTestManager(t, tc.net)
			cfg := &runtime.PodSandboxConfig{Metadata: &runtime.PodSandboxMetadata{Name: "p", Namespace: "n", Uid: "u"}}
			_, err := m.RunPod(context.Background(), cfg, "")
			if err == nil || !strings.Contains(err.Error(), tc.wantInErr) {
				t.Fatalf("RunPod = %v, want an error with %q", err, tc.wantInErr)
			}
			if tc.net.detaches != 1 {
				t.Errorf("%d network teardowns, want 1", tc.net.detaches)
			}
			pods := m.Pods()
			if !tc.wantKept {
				if len(pods) != 0 || records(t, m) != 0 {
					t.Fatalf("%d pods, %d records left by a rolled back start", len(pods), records(t, m))
				}
				if ents, _ := os.ReadDir(filepath.Join(m.cfg.Root, "pods")); len(ents) != 0 {
					t.Errorf("pod directories left: %v", ents)
				}
				return
			}
			// Kept, not ready, and recorded: the next stop retries the
			// teardown, then the pod can go.
			if len(pods) != 1 || records(t, m) != 1 {
				t.Fatalf("%d pods, %d records; want the pod kept", len(pods), records(t, m))
			}
			if st, _, _ := pods[0].Snapshot(); st != runtime.PodSandboxState_SANDBOX_NOTREADY {
				t.Fatalf("kept pod is %v", st)
			}
			if _, err := m.RunPod(context.Background(), cfg, ""); !errors.Is(err, ErrAlreadyExists) {
				t.Errorf("a second start with the kept pod's name = %v, want ErrAlreadyExists", err)
			}
			if err := m.StopPod(context.Background(), pods[0].ID()); !errors.Is(err, delFailed) {
				t.Fatalf("StopPod with the teardown failing = %v", err)
			}
			tc.net.detachErr = nil
			if err := m.StopPod(context.Background(), pods[0].ID()); err != nil {
				t.Fatalf("StopPod = %v", err)
			}
			if err := m.RemovePod(context.Background(), pods[0].ID()); err != nil {
				t.Fatalf("RemovePod = %v", err)
			}
			if len(m.Pods()) != 0 || records(t, m) != 0 {
				t.Fatal("pod still there after RemovePod")
			}
		})
	}
}
