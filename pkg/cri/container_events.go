package cri

import (
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// GetContainerEvents streams container lifecycle events until the client
// goes away.
func (s *Service) GetContainerEvents(r *runtimeapi.GetEventsRequest, stream runtimeapi.RuntimeService_GetContainerEventsServer) error {
	ch, cancel := s.events.Subscribe()
	defer cancel()
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case ev := <-ch:
			if p, err := s.pods.Pod(ev.PodSandboxStatus.GetId()); err == nil {
				ev.PodSandboxStatus = podStatus(p)
			}
			if c, err := s.ctrs.Container(ev.ContainerId); err == nil {
				ev.ContainersStatuses = []*runtimeapi.ContainerStatus{containerStatus(c)}
			}
			if err := stream.Send(ev); err != nil {
				return err
			}
		}
	}
}
