package cri

import (
	"context"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Status reports RuntimeReady once an accelerator is chosen and usable.
// NetworkReady is false until hyperlet has a CNI integration.
func (s *Service) Status(ctx context.Context, _ *runtimeapi.StatusRequest) (*runtimeapi.StatusResponse, error) {
	runtime := &runtimeapi.RuntimeCondition{Type: runtimeapi.RuntimeReady, Status: true}
	if s.accel == nil {
		runtime.Status, runtime.Reason, runtime.Message = false, "NoHypervisor", "no VM driver configured"
	} else if a, err := s.accel(); err != nil {
		runtime.Status, runtime.Reason, runtime.Message = false, "HypervisorNotReady", err.Error()
	} else {
		runtime.Message = "pod VMs run under " + string(a)
	}
	network := &runtimeapi.RuntimeCondition{
		Type: runtimeapi.NetworkReady, Status: false,
		Reason: "NetworkPluginNotReady", Message: "pod networking (CNI) is not implemented yet",
	}
	return &runtimeapi.StatusResponse{
		Status: &runtimeapi.RuntimeStatus{Conditions: []*runtimeapi.RuntimeCondition{runtime, network}},
	}, nil
}
