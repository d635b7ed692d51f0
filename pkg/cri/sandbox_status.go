package cri

import (
	"context"
	"encoding/json"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hyperlet/hyperlet/pkg/sandbox"
)

// PodSandboxStatus reports a pod's state.
func (s *Service) PodSandboxStatus(ctx context.Context, r *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	if s.hostPod(r.PodSandboxId) {
		return s.host.PodSandboxStatus(ctx, r)
	}
	p, err := s.pods.Pod(r.PodSandboxId)
	if err != nil {
		return nil, err
	}
	resp := &runtimeapi.PodSandboxStatusResponse{Status: podStatus(p)}
	if r.Verbose {
		info, _ := json.Marshal(map[string]any{"vmPid": p.VMPID(), "boot": p.Boot(), "paused": p.Paused(), "config": p.Config()})
		resp.Info = map[string]string{"info": string(info)}
	}
	return resp, nil
}

func podStatus(p *sandbox.Pod) *runtimeapi.PodSandboxStatus {
	cfg := p.Config()
	state, created, handler := p.Snapshot()
	ns := cfg.GetLinux().GetSecurityContext().GetNamespaceOptions()
	return &runtimeapi.PodSandboxStatus{
		Id:             p.ID(),
		Metadata:       cfg.GetMetadata(),
		State:          state,
		CreatedAt:      created,
		Network:        networkStatus(p.IPs()),
		Linux:          &runtimeapi.LinuxPodSandboxStatus{Namespaces: &runtimeapi.Namespace{Options: ns}},
		Labels:         cfg.GetLabels(),
		Annotations:    cfg.GetAnnotations(),
		RuntimeHandler: handler,
	}
}

func networkStatus(ips []string) *runtimeapi.PodSandboxNetworkStatus {
	n := &runtimeapi.PodSandboxNetworkStatus{}
	for i, ip := range ips {
		if i == 0 {
			n.Ip = ip
		} else {
			n.AdditionalIps = append(n.AdditionalIps, &runtimeapi.PodIP{Ip: ip})
		}
	}
	return n
}
