package sandbox

import (
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"

	"github.com/hyperlet/hyperlet/pkg/propagate"
)

// propagates says whether any of the mounts receives the host's later
// mounts (HostToContainer or Bidirectional).
func propagates(ms []*runtime.Mount) bool {
	for _, m := range ms {
		if m.GetImage() == nil && m.GetPropagation() != runtime.MountPropagation_PROPAGATION_PRIVATE {
			return true
		}
	}
	return false
}

// relayMounts starts carrying the host's mounts in the pod's propagating
// volumes on into its VM's jail, idmapped (pkg/propagate), once per VM.
func (p *Pod) relayMounts() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.relay != nil || p.vm == nil || p.rec.VM.SharedDir == "" {
		return
	}
	r, err := propagate.Start(p.vm.PID(), p.rec.VM.SharedDir)
	if err != nil {
		klog.ErrorS(err, "relay host mounts into the pod VM; they show as owned by nobody there", "pod", p.ID())
		return
	}
	p.relay = r
}

// syncMounts relays the host's mounts made so far before a call into a
// container (an exec), so that the call sees them.
func (p *Pod) syncMounts() {
	p.mu.Lock()
	r := p.relay
	p.mu.Unlock()
	if r == nil {
		return
	}
	if err := r.Sync(); err != nil {
		klog.ErrorS(err, "relay host mounts into the pod VM", "pod", p.ID())
	}
}

// stopRelay ends the relay when the VM goes.
func (p *Pod) stopRelay() {
	p.mu.Lock()
	r := p.relay
	p.relay = nil
	p.mu.Unlock()
	if r != nil {
		r.Close()
	}
}
