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
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"

	"github.com/hyperlet/hyperlet/pkg/agent"
	"github.com/hyperlet/hyperlet/pkg/vm"
)

// podRecord is what survives a daemon restart.
type podRecord struct {
	ID             string                  `json:"id"`
	Config         []byte                  `json:"config"` // runtime.PodSandboxConfig, protobuf
	RuntimeHandler string                  `json:"runtimeHandler,omitempty"`
	CreatedAt      int64                   `json:"createdAt"`
	State          runtime.PodSandboxState `json:"state"`
	VM             vm.Config               `json:"vm"`
	// Images are the image disks attached to the VM, by image ID.
	Images   map[string]vm.DiskAddr `json:"images,omitempty"`
	NextDisk int                    `json:"nextDisk"`
	Network  *podNetwork            `json:"network,omitempty"`
	// Boot says how the VM started: BootCold, BootTemplate or BootPool.
	Boot string `json:"boot,omitempty"`
}

// Pod is one pod and its VM.
type Pod struct {
	m   *Manager
	cfg *runtime.PodSandboxConfig

	// mu serialises the pod's lifecycle (run, stop, remove, image attach).
	mu    sync.Mutex
	rec   podRecord
	vm    vm.VM
	agent *agent.Client
}

// ID is the pod's ID.
func (p *Pod) ID() string { return p.rec.ID }

// Config is the pod's CRI configuration.
func (p *Pod) Config() *runtime.PodSandboxConfig { return p.cfg }

// Snapshot returns the pod's current record.
func (p *Pod) Snapshot() (state runtime.PodSandboxState, createdAt int64, handler string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.rec.State, p.rec.CreatedAt, p.rec.RuntimeHandler
}

// Boot says how the pod's VM started: BootCold, BootTemplate or BootPool.
func (p *Pod) Boot() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.rec.Boot
}

// VMPID is the pid of the pod's hypervisor process, 0 when stopped.
func (p *Pod) VMPID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.vm == nil {
		return 0
	}
	return p.vm.PID()
}

func (p *Pod) name() string {
	md := p.cfg.GetMetadata()
	return fmt.Sprintf("%s_%s_%s_%d", md.GetName(), md.GetNamespace(), md.GetUid(), md.GetAttempt())
}

func (p *Pod) dir() string { return filepath.Join(p.m.cfg.Root, "pods", p.rec.ID) }

func (p *Pod) persist() error { return p.m.db.put(podsBucket, p.rec.ID, &p.rec) }

// client returns the agent of a ready pod.
func (p *Pod) client() (*agent.Client, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.rec.State != runtime.PodSandboxState_SANDBOX_READY || p.agent == nil {
		return nil, fmt.Errorf("pod %s is not ready: %w", p.rec.ID, ErrNotReady)
	}
	return p.agent, nil
}

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
	return nil
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
	defer func() {
		if retErr != nil {
			m.releaseName(p.name(), id)
		}
	}()
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
	warm := m.pool.take(vc)
	if warm != nil {
		// The warm VM becomes the pod's: its console log moves to the pod.
		if err := os.Rename(warm.Config.ConsoleLog, vc.ConsoleLog); err != nil {
			m.pool.discard(warm)
			os.RemoveAll(p.dir())
			return nil, fmt.Errorf("adopt warm VM: %w", err)
		}
		warm.Config.ConsoleLog = vc.ConsoleLog
		warm.Config.CgroupParent, warm.Config.OOMScoreAdj = cgParent, oomAdj
		vc = warm.Config
		p.rec.Boot = BootPool
	} else if err := makeShared(vc.SharedDir); err != nil {
		os.RemoveAll(p.dir())
		return nil, err
	}
	p.rec.VM = vc
	// The record goes first, so a daemon killed during boot finds the VM
	// and stops it on restart.
	if err := p.persist(); err != nil {
		if warm != nil {
			m.pool.discard(warm)
		}
		os.RemoveAll(p.dir())
		return nil, fmt.Errorf("persist pod: %w", err)
	}
	var (
		v      vm.VM
		client *agent.Client
	)
	if warm != nil {
		m.pool.adopted(warm)
		v, client = warm.vm, warm.client
	}
	defer func() {
		if retErr != nil {
			if v != nil {
				client.Close()
				v.Kill()
				v.Wait(context.Background())
			}
			m.db.delete(podsBucket, id)
			os.RemoveAll(p.dir())
			removeShared(vc.SharedDir)
		}
	}()
	if c, ok := v.(vm.Confiner); ok && warm != nil {
		if err := c.Confine(cgParent, oomAdj); err != nil {
			return nil, fmt.Errorf("move warm VM into the pod's cgroup: %w", err)
		}
	}
	var hostTap string
	if warm != nil {
		hostTap = warm.Tap
	}
	nic, netRes, err := m.attachNetwork(ctx, p, hostTap)
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			m.detachNetwork(context.Background(), p)
		}
	}()
	if warm == nil {
		vc.Net = nic
		v, client, vc, p.rec.Boot, err = m.startVM(ctx, vc)
		nic.Tap.Close() // QEMU holds its own copy
		if err != nil {
			v = nil
			return nil, fmt.Errorf("boot pod VM: %w", err)
		}
		p.rec.VM = vc
	}
	setup := podSetup(cfg, p.rec.Network.IPs)
	setup.Interfaces, setup.Routes = guestNetwork(nic, netRes)
	// A clone's or warm VM's NIC has the MAC it started with.
	if cur := vc.Net.MAC; cur != nic.MAC {
		setup.Interfaces[0].CurrentMac = cur
	}
	if err := client.SetupPod(ctx, setup); err != nil {
		return nil, fmt.Errorf("set up pod in VM: %w", err)
	}
	p.vm, p.agent = v, client
	p.rec.State = runtime.PodSandboxState_SANDBOX_READY
	if err := p.persist(); err != nil {
		return nil, fmt.Errorf("persist pod: %w", err)
	}
	m.mu.Lock()
	m.pods[id] = p
	m.mu.Unlock()
	go p.watchVM(v)
	klog.InfoS("pod started", "pod", id, "name", p.name(), "vcpus", vc.VCPUs, "memoryMiB", vc.MemoryMiB, "accel", vc.Accel, "boot", p.rec.Boot)
	return p, nil
}

// watchVM marks the pod not ready when its VM dies on its own.
func (p *Pod) watchVM(v vm.VM) {
	<-v.Exited()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.vm != v || p.rec.State != runtime.PodSandboxState_SANDBOX_READY {
		return
	}
	klog.InfoS("pod VM exited unexpectedly", "pod", p.rec.ID, "err", v.Wait(context.Background()))
	p.rec.State = runtime.PodSandboxState_SANDBOX_NOTREADY
	p.persist()
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
	return &agent.PodSetup{
		Hostname:   host,
		Hosts:      []byte(hosts.String()),
		ResolvConf: resolvConf(cfg.GetDnsConfig()),
		Sysctls:    cfg.GetLinux().GetSysctls(),
		SharePid:   cfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetPid() == runtime.NamespaceMode_POD,
		SharedFs:   true,
	}
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

// StopPod stops the pod's containers and its VM. Stopping a stopped pod
// succeeds.
func (m *Manager) StopPod(ctx context.Context, id string) error {
	p, err := m.Pod(id)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, c := range m.podContainers(p.ID()) {
		if err := m.StopContainer(ctx, c.ID(), 0); err != nil {
			klog.InfoS("stop container of stopping pod", "container", c.ID(), "err", err)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopVMLocked(ctx)
	if err := m.detachNetwork(ctx, p); err != nil {
		return fmt.Errorf("tear down pod network: %w", err)
	}
	if p.rec.State != runtime.PodSandboxState_SANDBOX_NOTREADY {
		p.rec.State = runtime.PodSandboxState_SANDBOX_NOTREADY
		if err := p.persist(); err != nil {
			return fmt.Errorf("persist pod: %w", err)
		}
		klog.InfoS("pod stopped", "pod", p.ID())
	}
	return nil
}

// stopVMLocked powers the VM off: politely through the agent, then by force.
func (p *Pod) stopVMLocked(ctx context.Context) {
	if p.vm == nil {
		return
	}
	if p.agent != nil {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if err := p.agent.Shutdown(sctx); err == nil {
			p.vm.Wait(sctx)
		}
		cancel()
		p.agent.Close()
		p.agent = nil
	}
	select {
	case <-p.vm.Exited():
	default:
		p.vm.Kill()
		p.vm.Wait(context.Background())
	}
	p.vm = nil
}

// RemovePod stops the pod, removes its containers and deletes everything it
// had on the host. Removing a missing pod succeeds.
func (m *Manager) RemovePod(ctx context.Context, id string) error {
	p, err := m.Pod(id)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := m.StopPod(ctx, p.ID()); err != nil {
		return err
	}
	for _, c := range m.podContainers(p.ID()) {
		if err := m.RemoveContainer(ctx, c.ID()); err != nil {
			return fmt.Errorf("remove container %s: %w", c.ID(), err)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.rec.VM.SharedDir != "" {
		if err := removeShared(p.rec.VM.SharedDir); err != nil {
			return err
		}
	}
	if err := os.RemoveAll(p.dir()); err != nil {
		return fmt.Errorf("remove pod directory: %w", err)
	}
	if err := m.db.delete(podsBucket, p.ID()); err != nil {
		return fmt.Errorf("delete pod record: %w", err)
	}
	m.mu.Lock()
	delete(m.pods, p.ID())
	m.mu.Unlock()
	m.releaseName(p.name(), p.ID())
	klog.InfoS("pod removed", "pod", p.ID())
	return nil
}

func (m *Manager) podContainers(podID string) []*Container {
	var out []*Container
	for _, c := range m.Containers() {
		if c.rec.PodID == podID {
			out = append(out, c)
		}
	}
	return out
}

// ensureImage attaches an image's disk to the VM and mounts it, once.
func (p *Pod) ensureImage(ctx context.Context, imageID, disk string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.rec.State != runtime.PodSandboxState_SANDBOX_READY || p.vm == nil {
		return fmt.Errorf("pod %s is not ready: %w", p.rec.ID, ErrNotReady)
	}
	if _, ok := p.rec.Images[imageID]; ok {
		return nil
	}
	p.rec.NextDisk++
	addr, err := p.vm.AddDisk(ctx, vm.Disk{ID: fmt.Sprintf("img%d", p.rec.NextDisk), Path: disk, ReadOnly: true})
	if err != nil {
		return fmt.Errorf("attach image disk: %w", err)
	}
	if err := p.agent.MountImage(ctx, agentImageID(imageID), uint32(addr.Target), uint32(addr.LUN)); err != nil {
		return fmt.Errorf("mount image in VM: %w", err)
	}
	p.rec.Images[imageID] = addr
	return p.persist()
}

// agentImageID names an image inside the VM ("sha256:..." without the colon).
func agentImageID(id string) string { return strings.ReplaceAll(id, ":", "-") }

// restorePod rebuilds a pod from its record and takes over its VM.
func (m *Manager) restorePod(ctx context.Context, r *podRecord) (*Pod, error) {
	cfg := &runtime.PodSandboxConfig{}
	if err := proto.Unmarshal(r.Config, cfg); err != nil {
		return nil, fmt.Errorf("decode pod config: %w", err)
	}
	if r.Images == nil {
		r.Images = map[string]vm.DiskAddr{}
	}
	p := &Pod{m: m, cfg: cfg, rec: *r}
	v, err := m.hv.Attach(ctx, r.VM)
	if err != nil {
		if p.rec.State == runtime.PodSandboxState_SANDBOX_READY {
			klog.InfoS("pod VM is gone; pod is not ready", "pod", r.ID, "err", err)
			p.rec.State = runtime.PodSandboxState_SANDBOX_NOTREADY
			p.persist()
		}
		return p, nil
	}
	if p.rec.State != runtime.PodSandboxState_SANDBOX_READY {
		// A VM left by a daemon killed while booting or stopping it.
		klog.InfoS("stopping leftover VM of a pod that is not ready", "pod", r.ID)
		v.Kill()
		v.Wait(ctx)
		return p, nil
	}
	actx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	client, err := WaitAgent(actx, v)
	if err != nil {
		klog.ErrorS(err, "pod agent does not answer; stopping the VM", "pod", r.ID)
		v.Kill()
		v.Wait(ctx)
		p.rec.State = runtime.PodSandboxState_SANDBOX_NOTREADY
		p.persist()
		return p, nil
	}
	p.vm, p.agent = v, client
	go p.watchVM(v)
	return p, nil
}
