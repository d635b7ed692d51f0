package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"

	"github.com/hyperlet/hyperlet/pkg/agent"
	"github.com/hyperlet/hyperlet/pkg/failpoint"
	"github.com/hyperlet/hyperlet/pkg/oci"
	"github.com/hyperlet/hyperlet/pkg/vm"
)

func validatePod(cfg *runtime.PodSandboxConfig) error {
	md := cfg.GetMetadata()
	if md.GetName() == "" || md.GetNamespace() == "" || md.GetUid() == "" {
		return fmt.Errorf("%w: pod metadata needs name, namespace and uid", ErrInvalid)
	}
	ns := cfg.GetLinux().GetSecurityContext().GetNamespaceOptions()
	if ns.GetNetwork() == runtime.NamespaceMode_NODE || ns.GetPid() == runtime.NamespaceMode_NODE || ns.GetIpc() == runtime.NamespaceMode_NODE {
		return fmt.Errorf("%w: host namespaces (NODE mode) cannot be shared with a pod VM", ErrUnsupported)
	}
	if ns.GetPid() == runtime.NamespaceMode_TARGET {
		return fmt.Errorf("%w: pod PID namespace mode TARGET", ErrUnsupported)
	}
	return validateUserns(ns.GetUsernsOptions())
}

// sizeVM applies the sizing rule: the configured base size, plus the pod's
// overhead and its containers' limits when kubelet sends them; vCPUs cover
// the pod's CPU limit. Both are capped by the node's limits.
func (m *Manager) sizeVM(c *vm.Config, cfg *runtime.PodSandboxConfig) {
	lx := cfg.GetLinux()
	mem := int64(c.MemoryMiB)
	mem += lx.GetOverhead().GetMemoryLimitInBytes() >> 20
	mem += lx.GetResources().GetMemoryLimitInBytes() >> 20
	cpus := c.VCPUs
	if r := lx.GetResources(); r.GetCpuQuota() > 0 && r.GetCpuPeriod() > 0 {
		cpus = max(cpus, int((r.CpuQuota+r.CpuPeriod-1)/r.CpuPeriod))
	}
	maxCPU := m.cfg.MaxVCPUs
	if maxCPU <= 0 {
		maxCPU = goruntime.NumCPU()
	}
	c.VCPUs = min(cpus, maxCPU)
	if m.cfg.MaxMemoryMiB > 0 {
		mem = min(mem, int64(m.cfg.MaxMemoryMiB))
	}
	c.MemoryMiB = int(mem)
}

// checkMemory refuses a VM bigger than the node: without a configured cap
// (which sizeVM applies), the node's memory is the cap.
func (m *Manager) checkMemory(mib int) error {
	if m.cfg.MaxMemoryMiB > 0 {
		return nil
	}
	total, err := nodeMemoryMiB()
	if err != nil {
		return fmt.Errorf("read node memory: %w", err)
	}
	if int64(mib) > total {
		return fmt.Errorf("%w: the pod VM needs %d MiB of memory, more than the node has (%d MiB)", ErrInvalid, mib, total)
	}
	return nil
}

// nodeMemoryMiB is the host's MemTotal.
func nodeMemoryMiB() (int64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemTotal:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			return kb >> 10, err
		}
	}
	return 0, errors.New("no MemTotal in /proc/meminfo")
}

// podOOMScoreAdj is the VM's oom_score_adj by the pod's QoS class, read
// from the cgroup parent kubelet gives it: the OOM killer picks best-effort
// pod VMs first and guaranteed ones last, as kubelet ranks containers.
func podOOMScoreAdj(cfg *runtime.PodSandboxConfig) int {
	parent := strings.ToLower(cfg.GetLinux().GetCgroupParent())
	switch {
	case strings.Contains(parent, "besteffort"):
		return 1000
	case strings.Contains(parent, "burstable"):
		return 500
	case strings.Contains(parent, "kubepods"):
		return -997
	}
	return 0
}

// RunPod boots the pod's VM and gives it the pod's identity. On failure
// nothing is left: no VM, record or directory.
func (m *Manager) RunPod(ctx context.Context, cfg *runtime.PodSandboxConfig, handler string) (_ *Pod, retErr error) {
	if err := validatePod(cfg); err != nil {
		return nil, err
	}
	raw, err := proto.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: encode pod config: %v", ErrInvalid, err)
	}
	id := newID()
	p := &Pod{m: m, cfg: cfg, rec: podRecord{
		ID: id, Config: raw, RuntimeHandler: handler, CreatedAt: time.Now().UnixNano(),
		State: runtime.PodSandboxState_SANDBOX_NOTREADY, Images: map[string]vm.DiskAddr{},
	}}
	if err := m.reserveName(p.name(), id); err != nil {
		return nil, err
	}
	kept := false // a failed start whose teardown failed keeps its record
	defer undo(&retErr, func() {
		if !kept {
			m.releaseName(p.name(), id)
		}
	})
	ph := m.phases("RunPodSandbox")
	if err := m.podStarts.enter(ctx); err != nil {
		return nil, err
	}
	defer m.podStarts.leave()
	ph.done("queue")
	defer m.hooks.Block()()
	vc, err := m.baseVM(ctx, id[:16])
	if err != nil {
		return nil, fmt.Errorf("%w: no usable VM accelerator: %v", ErrNotReady, err)
	}
	vc.ConsoleLog = filepath.Join(p.dir(), "console.log")
	m.sizeVM(&vc, cfg)
	if err := m.checkMemory(vc.MemoryMiB); err != nil {
		return nil, err
	}
	cgParent, oomAdj := cfg.GetLinux().GetCgroupParent(), podOOMScoreAdj(cfg)
	vc.CgroupParent, vc.OOMScoreAdj = cgParent, oomAdj
	if err := os.MkdirAll(p.dir(), 0o700); err != nil {
		return nil, err
	}
	src := m.vmSource(vc)
	boot, err := src.prepare(&vc)
	if err != nil {
		src.release()
		os.RemoveAll(p.dir())
		return nil, err
	}
	p.rec.VM, p.rec.Boot = vc, boot
	// The record goes first, so a daemon killed during boot finds the VM
	// and stops it on restart. It names the pod's network namespace
	// before the namespace exists, for the same reason.
	p.rec.Network = &podNetwork{NetNS: netnsName(id)}
	if err := p.persist(); err != nil {
		src.release()
		os.RemoveAll(p.dir())
		removeShared(vc.SharedDir)
		return nil, fmt.Errorf("persist pod: %w", err)
	}
	ph.done("prepare")
	var (
		v      vm.VM
		client *agent.Client
	)
	defer undo(&retErr, func() {
		if v != nil {
			client.Close()
			v.Kill()
			v.Wait(context.Background())
		} else {
			src.release()
		}
		dctx, dcancel := context.WithTimeout(context.Background(), teardownTimeout)
		err := m.detachNetwork(dctx, p)
		dcancel()
		if err != nil {
			// The namespace and its IP lease are still there: keep the pod,
			// not ready, so StopPodSandbox (kubelet's sandbox GC) retries
			// the teardown, as containerd does.
			p.rec.State = runtime.PodSandboxState_SANDBOX_NOTREADY
			if perr := p.persist(); perr == nil {
				kept = true
				m.mu.Lock()
				m.pods[id] = p
				m.mu.Unlock()
				retErr = fmt.Errorf("%w (its network teardown failed too, so the pod is kept, not ready, for StopPodSandbox to retry: %v)", retErr, err)
				return
			}
		}
		if err := m.db.delete(podsBucket, id); err != nil {
			klog.ErrorS(err, "delete record of a pod that failed to start; the next start sweeps it", "pod", id)
		}
		os.RemoveAll(p.dir())
		removeShared(vc.SharedDir)
	})
	if err := failpoint.Hit("run-pod:before-network"); err != nil {
		return nil, err
	}
	nic, netRes, err := m.attachNetwork(ctx, p, src.hostTap())
	if err != nil {
		return nil, err
	}
	ph.done("network")
	if err := failpoint.Hit("run-pod:before-vm"); err != nil {
		return nil, err
	}
	v, client, vc, p.rec.Boot, err = src.start(ctx, vc, nic)
	if err != nil {
		return nil, err
	}
	ph.done("vm")
	p.rec.VM = vc
	setup := podSetup(cfg, p.rec.Network.IPs)
	setup.Interfaces, setup.Routes = guestNetwork(nic, netRes)
	// A clone's or warm VM's NIC has the MAC it started with.
	if cur := vc.Net.MAC; cur != nic.MAC {
		setup.Interfaces[0].CurrentMac = cur
	}
	if err := failpoint.Hit("run-pod:before-setup"); err != nil {
		return nil, err
	}
	if err := client.SetupPod(ctx, setup); err != nil {
		return nil, fmt.Errorf("set up pod in VM: %w", err)
	}
	ph.done("setup")
	if err := failpoint.Hit("run-pod:before-ready"); err != nil {
		return nil, err
	}
	// The plugins see the pod before anyone else: it is listed once they
	// all agreed. A refusal tells those that saw it that it is gone.
	if err := m.hooks.RunPodSandbox(ctx, p); err != nil {
		m.undoPodHooks(p)
		return nil, fmt.Errorf("NRI RunPodSandbox: %w", err)
	}
	ph.done("nri")
	if err := failpoint.Hit("run-pod:after-hooks"); err != nil {
		m.undoPodHooks(p)
		return nil, err
	}
	p.vm, p.agent = v, client
	p.rec.State = runtime.PodSandboxState_SANDBOX_READY
	if err := p.persist(); err != nil {
		m.undoPodHooks(p)
		return nil, fmt.Errorf("persist pod: %w", err)
	}
	m.mu.Lock()
	m.pods[id] = p
	m.mu.Unlock()
	ph.done("record")
	go p.watchVM(v)
	klog.InfoS("pod started", "pod", id, "name", p.name(), "vcpus", vc.VCPUs, "memoryMiB", vc.MemoryMiB, "accel", vc.Accel, "boot", p.rec.Boot)
	return p, nil
}

// undoPodHooks tells the plugins a pod they were told of is gone.
func (m *Manager) undoPodHooks(p *Pod) {
	ctx, cancel := context.WithTimeout(context.Background(), teardownTimeout)
	defer cancel()
	if err := m.hooks.StopPodSandbox(ctx, p); err != nil {
		klog.ErrorS(err, "NRI StopPodSandbox of a pod that failed to start", "pod", p.ID())
	}
	if err := m.hooks.RemovePodSandbox(ctx, p); err != nil {
		klog.ErrorS(err, "NRI RemovePodSandbox of a pod that failed to start", "pod", p.ID())
	}
}

func podSetup(cfg *runtime.PodSandboxConfig, ips []string) *agent.PodSetup {
	host := cfg.GetHostname()
	if host == "" {
		host = cfg.GetMetadata().GetName()
	}
	if len(host) > 63 {
		host = host[:63]
	}
	var hosts strings.Builder
	hosts.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	if len(ips) > 0 {
		fmt.Fprintf(&hosts, "%s\t%s\n", ips[0], host)
	} else {
		fmt.Fprintf(&hosts, "127.0.1.1\t%s\n", host)
	}
	setup := &agent.PodSetup{
		Hostname:   host,
		Hosts:      []byte(hosts.String()),
		ResolvConf: resolvConf(cfg.GetDnsConfig()),
		Sysctls:    cfg.GetLinux().GetSysctls(),
		SharePid:   cfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetPid() == runtime.NamespaceMode_POD,
		SharedFs:   true,
	}
	if oci.PodUserns(cfg) {
		u := cfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetUsernsOptions()
		setup.UidMappings, setup.GidMappings = agentIDMaps(u.GetUids()), agentIDMaps(u.GetGids())
	}
	return setup
}

func resolvConf(d *runtime.DNSConfig) []byte {
	var b strings.Builder
	for _, s := range d.GetServers() {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	if len(d.GetSearches()) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(d.GetSearches(), " "))
	}
	if len(d.GetOptions()) > 0 {
		fmt.Fprintf(&b, "options %s\n", strings.Join(d.GetOptions(), " "))
	}
	return []byte(b.String())
}
