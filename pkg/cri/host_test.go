package cri

import (
	"context"
	"errors"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hyperlet/hyperlet/pkg/hostruntime"
	"github.com/hyperlet/hyperlet/pkg/sandbox"
)

// vmPods is a VM runtime with no pods: every lookup is NotFound, and a
// pod it is asked to run is recorded.
type vmPods struct {
	noPods
	ran []string
}

// noPods stands in for the methods the test does not call.
type noPods = Pods

func (v *vmPods) Pod(id string) (*sandbox.Pod, error) { return nil, sandbox.ErrNotFound }
func (v *vmPods) Pods() []*sandbox.Pod                { return nil }
func (v *vmPods) RunPod(ctx context.Context, cfg *runtimeapi.PodSandboxConfig, handler string) (*sandbox.Pod, error) {
	v.ran = append(v.ran, cfg.Metadata.Name)
	return nil, errors.New("no VMs in unit tests")
}
func (v *vmPods) StopPod(ctx context.Context, id string) error {
	return errors.New("not the VM runtime's")
}

// fakeHost records what reaches the host runtime.
type fakeHost struct {
	*hostruntime.Runtime
	ran, stopped []string
	listErr      error
}

func (h *fakeHost) RunPodSandbox(ctx context.Context, r *runtimeapi.RunPodSandboxRequest, _ ...grpc.CallOption) (*runtimeapi.RunPodSandboxResponse, error) {
	h.ran = append(h.ran, r.Config.Metadata.Name+"/"+r.RuntimeHandler)
	return &runtimeapi.RunPodSandboxResponse{PodSandboxId: "host-" + r.Config.Metadata.Name}, nil
}

func (h *fakeHost) StopPodSandbox(ctx context.Context, r *runtimeapi.StopPodSandboxRequest, _ ...grpc.CallOption) (*runtimeapi.StopPodSandboxResponse, error) {
	h.stopped = append(h.stopped, r.PodSandboxId)
	return &runtimeapi.StopPodSandboxResponse{}, nil
}

func (h *fakeHost) RemovePodSandbox(ctx context.Context, r *runtimeapi.RemovePodSandboxRequest, _ ...grpc.CallOption) (*runtimeapi.RemovePodSandboxResponse, error) {
	return nil, status.Errorf(codes.NotFound, "sandbox %q not found", r.PodSandboxId)
}

func (h *fakeHost) ListPodSandbox(ctx context.Context, r *runtimeapi.ListPodSandboxRequest, _ ...grpc.CallOption) (*runtimeapi.ListPodSandboxResponse, error) {
	if h.listErr != nil {
		return nil, h.listErr
	}
	return &runtimeapi.ListPodSandboxResponse{Items: []*runtimeapi.PodSandbox{{Id: "host-a"}}}, nil
}

func TestHostRouting(t *testing.T) {
	rt, err := hostruntime.Dial("/nonexistent.sock", []string{"runc"})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	host := &fakeHost{Runtime: rt}
	vms := &vmPods{}
	s := New(WithHost(host), WithVMHandlers([]string{"hyperlet"}))
	s.pods = vms
	ctx := context.Background()
	pod := func(name string, ns *runtimeapi.NamespaceOption) *runtimeapi.PodSandboxConfig {
		return &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "n", Uid: name},
			Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: ns}}}
	}
	for _, tc := range []struct {
		name, handler string
		ns            *runtimeapi.NamespaceOption
		wantHost      string
		wantCode      codes.Code
	}{
		{"vm", "", nil, "", codes.OK},
		{"hostnet", "", &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}, "hostnet/", codes.OK},
		{"hostpid", "", &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_NODE}, "hostpid/", codes.OK},
		{"hostipc", "", &runtimeapi.NamespaceOption{Ipc: runtimeapi.NamespaceMode_NODE}, "hostipc/", codes.OK},
		{"handler", "runc", nil, "handler/runc", codes.OK},
		{"vmhandler", "hyperlet", nil, "", codes.OK},
		{"otherhandler", "kata", nil, "", codes.InvalidArgument},
	} {
		host.ran, vms.ran = nil, nil
		_, err := s.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: pod(tc.name, tc.ns), RuntimeHandler: tc.handler})
		switch {
		case tc.wantCode != codes.OK:
			if status.Code(toGRPC(err)) != tc.wantCode || len(vms.ran)+len(host.ran) != 0 {
				t.Errorf("%s: %v (VM %v, host %v), want %v and no pod", tc.name, err, vms.ran, host.ran, tc.wantCode)
			}
		case tc.wantHost != "" && (len(host.ran) != 1 || host.ran[0] != tc.wantHost):
			t.Errorf("%s: host runtime got %v, want %s", tc.name, host.ran, tc.wantHost)
		case tc.wantHost == "" && (len(vms.ran) != 1 || len(host.ran) != 0):
			t.Errorf("%s: VM runtime got %v, host %v; want the VM runtime", tc.name, vms.ran, host.ran)
		}
	}
	// IDs the VM runtime does not know are the host's.
	if _, err := s.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: "host-a"}); err != nil || len(host.stopped) != 1 {
		t.Errorf("stop of a host pod: %v, host got %v", err, host.stopped)
	}
	// Removing an ID neither runtime knows succeeds.
	if _, err := s.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: "nope"}); err != nil {
		t.Errorf("removal of an unknown pod: %v", err)
	}
	// Lists merge; a host runtime that does not answer leaves the VM pods.
	if l, err := s.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err != nil || len(l.Items) != 1 {
		t.Errorf("merged list: %v %v", l, err)
	}
	host.listErr = errors.New("containerd down")
	if l, err := s.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err != nil || len(l.Items) != 0 {
		t.Errorf("list with the host runtime down: %v %v", l, err)
	}
}
