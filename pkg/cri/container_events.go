package cri

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"
)

// GetContainerEvents streams container lifecycle events until the client
// goes away: the VM runtime's, and the host runtime's where containerd
// streams them (1.7 and later; 1.6 has no GetContainerEvents, and kubelet's
// relisting covers its pods).
func (s *Service) GetContainerEvents(r *runtimeapi.GetEventsRequest, stream runtimeapi.RuntimeService_GetContainerEventsServer) error {
	ch, cancel := s.events.Subscribe()
	defer cancel()
	var host <-chan *runtimeapi.ContainerEventResponse
	if s.host != nil {
		host = s.hostEvents(stream.Context())
	}
	for {
		var ev *runtimeapi.ContainerEventResponse
		select {
		case <-stream.Context().Done():
			return nil
		case ev = <-host:
		case ev = <-ch:
			if p, err := s.pods.Pod(ev.PodSandboxStatus.GetId()); err == nil {
				ev.PodSandboxStatus = podStatus(p)
			}
			if c, err := s.ctrs.Container(ev.ContainerId); err == nil {
				ev.ContainersStatuses = []*runtimeapi.ContainerStatus{containerStatus(c)}
			}
		}
		if err := stream.Send(ev); err != nil {
			return err
		}
	}
}

// hostEventsRetry is how long a broken host event stream waits to reopen.
const hostEventsRetry = 5 * time.Second

// hostEvents relays the host runtime's container events until ctx ends. A
// host runtime without the call ends the relay; one that is down is
// retried.
func (s *Service) hostEvents(ctx context.Context) <-chan *runtimeapi.ContainerEventResponse {
	out := make(chan *runtimeapi.ContainerEventResponse)
	go func() {
		for ctx.Err() == nil {
			c, err := s.host.GetContainerEvents(ctx, &runtimeapi.GetEventsRequest{})
			for err == nil {
				var ev *runtimeapi.ContainerEventResponse
				if ev, err = c.Recv(); err == nil {
					select {
					case out <- ev:
					case <-ctx.Done():
						return
					}
				}
			}
			if status.Code(err) == codes.Unimplemented {
				klog.V(2).InfoS("the host runtime streams no container events; kubelet's relist covers its pods")
				return
			}
			if ctx.Err() == nil {
				klog.V(2).InfoS("host runtime event stream broken; reopening", "err", err, "after", hostEventsRetry)
			}
			select {
			case <-ctx.Done():
			case <-time.After(hostEventsRetry):
			}
		}
	}()
	return out
}
