package cri

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hyperlet/hyperlet/pkg/hostruntime"
	"github.com/hyperlet/hyperlet/pkg/sandbox"
)

// eventsHost streams the given events, then fails with err.
type eventsHost struct {
	*hostruntime.Runtime
	events []*runtimeapi.ContainerEventResponse
	err    error
}

type hostEventStream struct {
	grpc.ClientStream
	h *eventsHost
}

func (s *hostEventStream) Recv() (*runtimeapi.ContainerEventResponse, error) {
	if len(s.h.events) == 0 {
		return nil, s.h.err
	}
	ev := s.h.events[0]
	s.h.events = s.h.events[1:]
	return ev, nil
}

func (h *eventsHost) GetContainerEvents(ctx context.Context, r *runtimeapi.GetEventsRequest, _ ...grpc.CallOption) (grpc.ServerStreamingClient[runtimeapi.ContainerEventResponse], error) {
	return &hostEventStream{h: h}, nil
}

// noCtrs is a VM runtime with no containers.
type noCtrs struct{ unusedContainers }

type unusedContainers = Containers

func (noCtrs) Container(id string) (*sandbox.Container, error) { return nil, sandbox.ErrNotFound }

// vmEvents publishes on a channel the test writes.
type vmEvents chan *runtimeapi.ContainerEventResponse

func (e vmEvents) Subscribe() (<-chan *runtimeapi.ContainerEventResponse, func()) {
	return e, func() {}
}

// eventSink is the CRI client's end of GetContainerEvents.
type eventSink struct {
	grpc.ServerStream
	ctx context.Context
	got chan string
}

func (s *eventSink) Context() context.Context { return s.ctx }
func (s *eventSink) Send(ev *runtimeapi.ContainerEventResponse) error {
	s.got <- ev.ContainerId
	return nil
}

func TestContainerEventsMergeHost(t *testing.T) {
	rt, err := hostruntime.Dial("/nonexistent.sock", []string{"runc"})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	for _, tc := range []struct {
		name string
		err  error // how the host stream ends
	}{
		{"host without the call", status.Error(codes.Unimplemented, "unknown method GetContainerEvents")},
		{"host stream broken", status.Error(codes.Unavailable, "containerd went away")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host := &eventsHost{Runtime: rt, err: tc.err, events: []*runtimeapi.ContainerEventResponse{
				{ContainerId: "host-1", ContainerEventType: runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT}}}
			vm := make(vmEvents, 1)
			s := New(WithHost(host))
			s.events, s.pods, s.ctrs = vm, &vmPods{}, noCtrs{}
			ctx, cancel := context.WithCancel(context.Background())
			sink := &eventSink{ctx: ctx, got: make(chan string, 4)}
			done := make(chan error)
			go func() { done <- s.GetContainerEvents(&runtimeapi.GetEventsRequest{}, sink) }()
			want := map[string]bool{"host-1": true}
			vm <- &runtimeapi.ContainerEventResponse{ContainerId: "vm-1"}
			want["vm-1"] = true
			for len(want) > 0 {
				select {
				case id := <-sink.got:
					if !want[id] {
						t.Fatalf("unexpected event for %s", id)
					}
					delete(want, id)
				case <-time.After(10 * time.Second):
					t.Fatalf("events not relayed: %v", want)
				}
			}
			cancel()
			if err := <-done; err != nil {
				t.Errorf("GetContainerEvents: %v", err)
			}
		})
	}
}
