package sandbox

import (
	"context"
	"fmt"
	"strings"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
	"github.com/hyperlet/hyperlet/pkg/cni"
	"github.com/hyperlet/hyperlet/pkg/vm"
)

// Network attaches pods to the node's pod network (pkg/cni).
type Network interface {
	Ready() error
	Add(ctx context.Context, p cni.Pod) (*cni.Result, error)
	Del(ctx context.Context, p cni.Pod) error
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

// attachNetwork creates the pod's namespace, runs CNI ADD and prepares the
// tap the VM's NIC uses: a new one, or hostTap, a warm VM's. On failure it
// undoes what it did.
func (m *Manager) attachNetwork(ctx context.Context, p *Pod, hostTap string) (_ *vm.NetDevice, _ *cni.Result, retErr error) {
	if m.cfg.Network == nil {
		return nil, nil, fmt.Errorf("%w: no pod network configured", ErrNotReady)
	}
	if err := m.cfg.Network.Ready(); err != nil {
		return nil, nil, fmt.Errorf("%w: pod network: %v", ErrNotReady, err)
	}
	name := netnsName(p.ID())
	nsPath, err := cni.NewNetNS(name)
	if err != nil {
		return nil, nil, err
	}
	p.rec.Network = &podNetwork{NetNS: name}
	if err := p.persist(); err != nil {
		cni.DeleteNetNS(name)
		return nil, nil, err
	}
	defer func() {
		if retErr != nil {
			m.detachNetwork(context.Background(), p)
		}
	}()
	res, err := m.cfg.Network.Add(ctx, cniPod(p.ID(), p.cfg, nsPath))
	if err != nil {
		return nil, nil, err
	}
	tap, err := cni.ConnectTap(nsPath, hostTap)
	if err != nil {
		return nil, nil, err
	}
	for _, ip := range res.IPs {
		p.rec.Network.IPs = append(p.rec.Network.IPs, ip.Address.IP.String())
	}
	return &vm.NetDevice{Tap: tap.File, MAC: tap.MAC}, res, nil
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

// detachNetwork runs CNI DEL and deletes the namespace. It is idempotent.
func (m *Manager) detachNetwork(ctx context.Context, p *Pod) error {
	n := p.rec.Network
	if n == nil || n.NetNS == "" {
		return nil
	}
	if m.cfg.Network != nil {
		nsPath := "/var/run/netns/" + n.NetNS
		if err := m.cfg.Network.Del(ctx, cniPod(p.ID(), p.cfg, nsPath)); err != nil {
			klog.ErrorS(err, "CNI DEL", "pod", p.ID())
			return err
		}
	}
	if err := cni.DeleteNetNS(n.NetNS); err != nil {
		return err
	}
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
