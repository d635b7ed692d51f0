package sandbox

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"

	"github.com/hyperlet/hyperlet/pkg/agent"
	"github.com/hyperlet/hyperlet/pkg/propagate"
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
	// Paused is set while the VM's vCPUs are stopped (PausePod).
	Paused bool `json:"paused,omitempty"`
}

// Pod is one pod and its VM.
type Pod struct {
	m   *Manager
	cfg *runtime.PodSandboxConfig

	// op serialises the pod's lifecycle work (stop, remove, image attach),
	// which can take seconds; mu guards the fields below and is only held
	// briefly, so status and list calls never wait on lifecycle work.
	op    sync.Mutex
	mu    sync.Mutex
	rec   podRecord
	vm    vm.VM
	agent *agent.Client
	// repause is set while a pod VM found paused runs for its restore;
	// stopping once StopPod began (no pause from then on).
	repause, stopping bool
	// hooksStopped is set once the NRI plugins were told the pod stopped
	// (or it was restored stopped).
	hooksStopped bool
	// relay carries host mounts into the VM, once a container has a
	// propagating volume.
	relay *propagate.Relay
}

// ID is the pod's ID.
func (p *Pod) ID() string { return p.rec.ID }

// Config is the pod's CRI configuration.
func (p *Pod) Config() *runtime.PodSandboxConfig { return p.cfg }

// Size is the pod VM's vCPUs and memory.
func (p *Pod) Size() (vcpus, memoryMiB int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.rec.VM.VCPUs, p.rec.VM.MemoryMiB
}

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

// AttachedImages lists the IDs of the images whose disks are attached to
// the pod's VM.
func (p *Pod) AttachedImages() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	ids := make([]string, 0, len(p.rec.Images))
	for id := range p.rec.Images {
		ids = append(ids, id)
	}
	return ids
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

// persist writes the pod's record; the caller holds p.mu (or owns p alone).
func (p *Pod) persist() error { return p.m.db.put(podsBucket, p.rec.ID, &p.rec) }

// setState records the pod's state; a failed write is logged: the state in
// memory is the truth until the next write.
func (p *Pod) setStateLocked(st runtime.PodSandboxState) {
	p.rec.State = st
	if err := p.persist(); err != nil {
		klog.ErrorS(err, "persist pod state", "pod", p.rec.ID, "state", st)
	}
}

// client returns the agent of a ready pod.
func (p *Pod) client() (*agent.Client, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.rec.State == runtime.PodSandboxState_SANDBOX_READY && p.rec.Paused {
		return nil, fmt.Errorf("pod %s: %w", p.rec.ID, ErrPaused)
	}
	if p.rec.State != runtime.PodSandboxState_SANDBOX_READY || p.agent == nil {
		return nil, fmt.Errorf("pod %s is not ready: %w", p.rec.ID, ErrNotReady)
	}
	return p.agent, nil
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
	p.setStateLocked(runtime.PodSandboxState_SANDBOX_NOTREADY)
}
