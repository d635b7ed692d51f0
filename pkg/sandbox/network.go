package sandbox

import (
	"context"
	"fmt"
	"strings"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
	"github.com/hyperlet/hyperlet/pkg/cni"
	"github.com/hyperlet/hyperlet/pkg/failpoint"
	"github.com/hyperlet/hyperlet/pkg/vm"
)

// Network attaches pods to the node's pod network (pkg/cni).
type Network interface {
	Ready() error
	// Attach creates the namespace named netns, runs CNI ADD in it and
	// connects the VM's tap (new, or hostTap); on error the caller runs
	// Detach.
	Attach(ctx context.Context, p cni.Pod, netns, hostTap string) (*cni.Attachment, error)
	// Detach runs CNI DEL and deletes the namespace; it is idempotent.
	Detach(ctx context.Context, p cni.Pod, netns string) error
}

var _ Network = (*cni.Manager)(nil)

// podNetwork is a pod's network as recorded for status and teardown.
type podNetwork struct {
	NetNS string   `json:"netns"` // namespace name (under /var/run/netns)
	IPs   []string `json:"ips,omitempty"`
}

func netnsName(podID string) string { return "hyperlet-" + podID[:16] }

func cniPod(id string, cfg *runtime.PodSandboxConfig, nsPath string) cni.Pod {
	md := cfg.GetMetadata()
	p := cni.Pod{ID: id, NetNS: nsPath, Name: md.GetName(), Namespace: md.GetNamespace(), UID: md.GetUid()}
	for _, pm := range cfg.GetPortMappings() {
		if pm.HostPort <= 0 {
			continue
		}
		p.PortMappings = append(p.PortMappings, cni.PortMapping{
			HostPort: pm.HostPort, ContainerPort: pm.ContainerPort,
			Protocol: strings.ToLower(pm.Protocol.String()), HostIP: pm.HostIp,
		})
	}
	return p
}

// attachNetwork gives the pod its network, in the namespace its record
// names already, and returns the VM's NIC (its tap: a new one, or hostTap,
// a warm VM's). On failure the caller runs detachNetwork.
func (m *Manager) attachNetwork(ctx context.Context, p *Pod, hostTap string) (*vm.NetDevice, *cni.Result, error) {
	if m.cfg.Network == nil {
		return nil, nil, fmt.Errorf("%w: no pod network configured", ErrNotReady)
	}
	if err := m.cfg.Network.Ready(); err != nil {
		return nil, nil, fmt.Errorf("%w: pod network: %v", ErrNotReady, err)
	}
	a, err := m.cfg.Network.Attach(ctx, cniPod(p.ID(), p.cfg, ""), p.rec.Network.NetNS, hostTap)
	if err != nil {
		return nil, nil, err
	}
	for _, ip := range a.Result.IPs {
		p.rec.Network.IPs = append(p.rec.Network.IPs, ip.Address.IP.String())
	}
	return &vm.NetDevice{Tap: a.Tap.File, MAC: a.Tap.MAC}, a.Result, nil
}

// guestNetwork is what the agent configures from a CNI result.
func guestNetwork(dev *vm.NetDevice, res *cni.Result) ([]*agentapi.Interface, []*agentapi.Route) {
	ifc := &agentapi.Interface{Mac: dev.MAC}
	var gw4, gw6 string
	for _, ip := range res.IPs {
		ifc.Addresses = append(ifc.Addresses, ip.Address.String())
		if ip.Gateway != nil {
			if ip.Gateway.To4() != nil && gw4 == "" {
				gw4 = ip.Gateway.String()
			} else if ip.Gateway.To4() == nil && gw6 == "" {
				gw6 = ip.Gateway.String()
			}
		}
	}
	var routes []*agentapi.Route
	for _, r := range res.Routes {
		gw := ""
		if r.GW != nil {
			gw = r.GW.String()
		} else if r.Dst.IP.To4() != nil {
			gw = gw4
		} else {
			gw = gw6
		}
		routes = append(routes, &agentapi.Route{Dest: r.Dst.String(), Gateway: gw})
	}
	return []*agentapi.Interface{ifc}, routes
}

// teardownTimeout bounds a network teardown no caller bounds (a rollback).
const teardownTimeout = time.Minute

// detachNetwork runs CNI DEL and deletes the namespace. It is idempotent:
// the record keeps the namespace's name until both are done.
func (m *Manager) detachNetwork(ctx context.Context, p *Pod) error {
	p.mu.Lock()
	n := p.rec.Network
	p.mu.Unlock()
	if n == nil || n.NetNS == "" || m.cfg.Network == nil {
		return nil
	}
	if err := failpoint.Hit("cni-del"); err != nil {
		return err
	}
	if err := m.cfg.Network.Detach(ctx, cniPod(p.ID(), p.cfg, ""), n.NetNS); err != nil {
		klog.ErrorS(err, "tear down pod network", "pod", p.ID())
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rec.Network = &podNetwork{IPs: n.IPs}
	return p.persist()
}

// IPs returns the pod's addresses.
func (p *Pod) IPs() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.rec.Network == nil {
		return nil
	}
	return p.rec.Network.IPs
}
