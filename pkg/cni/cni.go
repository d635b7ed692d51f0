// Package cni gives each pod a network with the node's CNI configuration
// (libcni and the standard plugins): a network namespace per pod, ADD when
// the pod starts, DEL when it stops, and a tap device in that namespace,
// wired to the CNI interface with tc mirred redirects, that the pod VM's
// virtio-net device is attached to.
package cni

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	types100 "github.com/containernetworking/cni/pkg/types/100"
)

// IfName is the CNI interface name in the pod's namespace.
const IfName = "eth0"

// ErrNotConfigured means the conf dir holds no usable network.
var ErrNotConfigured = errors.New("no CNI network configured")

// Config locates the CNI configuration and plugins.
type Config struct {
	ConfDir  string
	BinDirs  []string
	CacheDir string // where libcni caches results for DEL after a restart
}

// Manager runs CNI for pods.
type Manager struct {
	cfg Config
	cni *libcni.CNIConfig
}

// New returns a Manager.
func New(cfg Config) *Manager {
	return &Manager{cfg: cfg, cni: libcni.NewCNIConfigWithCacheDir(cfg.BinDirs, cfg.CacheDir, nil)}
}

// network loads the first configuration in the conf dir (by file name), as
// kubelet's other runtimes do.
func (m *Manager) network() (*libcni.NetworkConfigList, error) {
	files, err := libcni.ConfFiles(m.cfg.ConfDir, []string{".conflist", ".conf", ".json"})
	if err != nil {
		return nil, fmt.Errorf("%w: read %s: %v", ErrNotConfigured, m.cfg.ConfDir, err)
	}
	sort.Strings(files)
	var errs []error
	for _, f := range files {
		var list *libcni.NetworkConfigList
		if filepath.Ext(f) == ".conflist" {
			list, err = libcni.ConfListFromFile(f)
		} else {
			var conf *libcni.NetworkConfig
			if conf, err = libcni.ConfFromFile(f); err == nil {
				list, err = libcni.ConfListFromConf(conf)
			}
		}
		if err == nil && len(list.Plugins) > 0 {
			return list, nil
		}
		errs = append(errs, fmt.Errorf("%s: %v", f, err))
	}
	return nil, fmt.Errorf("%w in %s %v", ErrNotConfigured, m.cfg.ConfDir, errors.Join(errs...))
}

// Ready reports whether a network is configured and its plugins exist.
func (m *Manager) Ready() error {
	list, err := m.network()
	if err != nil {
		return err
	}
	// kubelet asks every few seconds: look the plugins up, do not run them.
	for _, p := range list.Plugins {
		if _, err := invoke.FindInPath(p.Network.Type, m.cfg.BinDirs); err != nil {
			return fmt.Errorf("CNI plugin %q of %s: %w", p.Network.Type, list.Name, err)
		}
	}
	return nil
}

// PortMapping is a hostPort, passed to the portmap plugin.
type PortMapping struct {
	HostPort      int32  `json:"hostPort"`
	ContainerPort int32  `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP,omitempty"`
}

// Pod identifies a pod to the plugins.
type Pod struct {
	ID, NetNS            string
	Name, Namespace, UID string
	PortMappings         []PortMapping
	// Bandwidth limits in bits per second (0: none), for the bandwidth plugin.
	IngressBPS, EgressBPS int64
}

func (m *Manager) runtimeConf(p Pod) *libcni.RuntimeConf {
	rc := &libcni.RuntimeConf{
		ContainerID: p.ID,
		NetNS:       p.NetNS,
		IfName:      IfName,
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", p.Namespace},
			{"K8S_POD_NAME", p.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", p.ID},
			{"K8S_POD_UID", p.UID},
		},
		CapabilityArgs: map[string]any{},
	}
	if len(p.PortMappings) > 0 {
		rc.CapabilityArgs["portMappings"] = p.PortMappings
	}
	if p.IngressBPS > 0 || p.EgressBPS > 0 {
		bw := map[string]any{}
		if p.IngressBPS > 0 {
			bw["ingressRate"], bw["ingressBurst"] = p.IngressBPS, p.IngressBPS
		}
		if p.EgressBPS > 0 {
			bw["egressRate"], bw["egressBurst"] = p.EgressBPS, p.EgressBPS
		}
		rc.CapabilityArgs["bandwidth"] = bw
	}
	return rc
}

// IP is an address the pod got, with its gateway.
type IP struct {
	Address net.IPNet
	Gateway net.IP
}

// Route is a route the guest must install.
type Route struct {
	Dst net.IPNet
	GW  net.IP
}

// Result is what the guest needs to configure its interface.
type Result struct {
	IPs    []IP
	Routes []Route
}

// Add attaches the pod's namespace to the network.
func (m *Manager) Add(ctx context.Context, p Pod) (*Result, error) {
	list, err := m.network()
	if err != nil {
		return nil, err
	}
	r, err := m.cni.AddNetworkList(ctx, list, m.runtimeConf(p))
	if err != nil {
		return nil, fmt.Errorf("CNI ADD %s: %w", list.Name, err)
	}
	res, err := types100.NewResultFromResult(r)
	if err != nil {
		return nil, fmt.Errorf("CNI result: %w", err)
	}
	out := &Result{}
	for _, ip := range res.IPs {
		out.IPs = append(out.IPs, IP{Address: ip.Address, Gateway: ip.Gateway})
	}
	for _, rt := range res.Routes {
		out.Routes = append(out.Routes, Route{Dst: rt.Dst, GW: rt.GW})
	}
	if len(out.IPs) == 0 {
		return nil, fmt.Errorf("CNI ADD %s gave no IP address", list.Name)
	}
	return out, nil
}

// Del detaches the pod. It is idempotent and works after a daemon restart
// (libcni's cache holds what ADD was given); a namespace that is already
// gone is passed as empty, as the CNI spec allows.
func (m *Manager) Del(ctx context.Context, p Pod) error {
	list, err := m.network()
	if err != nil {
		return err
	}
	if p.NetNS != "" {
		if _, err := os.Stat(p.NetNS); err != nil {
			p.NetNS = ""
		}
	}
	if err := m.cni.DelNetworkList(ctx, list, m.runtimeConf(p)); err != nil {
		return fmt.Errorf("CNI DEL %s: %w", list.Name, err)
	}
	return nil
}
