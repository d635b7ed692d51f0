package cri

import (
	"context"
	"encoding/json"
	goruntime "runtime"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Status reports RuntimeReady once an accelerator is chosen and usable.
// NetworkReady is true once a CNI network is configured and its plugins
// are installed.
// Verbose status adds the VM templates and the warm pool, and the daemon's
// goroutine count (leak checks).
func (s *Service) Status(ctx context.Context, r *runtimeapi.StatusRequest) (*runtimeapi.StatusResponse, error) {
	runtime := &runtimeapi.RuntimeCondition{Type: runtimeapi.RuntimeReady, Status: true}
	if s.accel == nil {
		runtime.Status, runtime.Reason, runtime.Message = false, "NoHypervisor", "no VM driver configured"
	} else if a, err := s.accel(); err != nil {
		runtime.Status, runtime.Reason, runtime.Message = false, "HypervisorNotReady", err.Error()
	} else {
		runtime.Message = "pod VMs run under " + string(a)
	}
	network := &runtimeapi.RuntimeCondition{Type: runtimeapi.NetworkReady, Status: true}
	if s.network == nil {
		network.Status, network.Reason, network.Message = false, "NetworkPluginNotReady", "no pod network configured"
	} else if err := s.network(); err != nil {
		network.Status, network.Reason, network.Message = false, "NetworkPluginNotReady", err.Error()
	}
	resp := &runtimeapi.StatusResponse{
		Status: &runtimeapi.RuntimeStatus{Conditions: []*runtimeapi.RuntimeCondition{runtime, network}},
		// The default and the named VM handlers run pods in VMs; host
		// handlers on the host.
		RuntimeHandlers: []*runtimeapi.RuntimeHandler{{Name: "", Features: vmFeatures()}},
		// The guest agent resolves groups against the image itself, so
		// both policies hold (host pods' containerd cannot: there Strict
		// is refused).
		Features: &runtimeapi.RuntimeFeatures{SupplementalGroupsPolicy: true},
	}
	for _, h := range s.handlers {
		resp.RuntimeHandlers = append(resp.RuntimeHandlers, &runtimeapi.RuntimeHandler{Name: h, Features: vmFeatures()})
	}
	if s.host != nil {
		for _, h := range s.host.Handlers() {
			resp.RuntimeHandlers = append(resp.RuntimeHandlers, &runtimeapi.RuntimeHandler{Name: h, Features: &runtimeapi.RuntimeHandlerFeatures{}})
		}
	}
	if r.GetVerbose() {
		daemon, _ := json.Marshal(map[string]int{"goroutines": goruntime.NumGoroutine()})
		resp.Info = map[string]string{"daemon": string(daemon)}
		if s.vms != nil {
			info, _ := json.Marshal(s.vms.VMStatus())
			resp.Info["vms"] = string(info)
		}
	}
	return resp, nil
}

// vmFeatures are what a VM handler offers: recursive read-only volumes,
// enforced by the host on the volume's whole mount tree, and user
// namespaces, made by the guest agent inside the pod VM.
func vmFeatures() *runtimeapi.RuntimeHandlerFeatures {
	return &runtimeapi.RuntimeHandlerFeatures{RecursiveReadOnlyMounts: true, UserNamespaces: true}
}
