package sandbox

import (
	"context"

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
// volumes on into its VM's jail, idmapped (pkg/propagate), once per VM, and
// relays those made so far (before a restart, say).
func (p *Pod) relayMounts(ctx context.Context) {
	p.mu.Lock()
	r := p.relay
	if r == nil && p.vm != nil && !p.stopping && p.rec.VM.SharedDir != "" {
		var err error
		if r, err = propagate.Start(p.vm.PID(), p.rec.VM.SharedDir); err != nil {
			klog.ErrorS(err, "relay host mounts into the pod VM; they show as owned by nobody there", "pod", p.ID())
		}
		p.relay = r
	}
	p.mu.Unlock()
	p.syncRelay(ctx, r)
}

// syncMounts relays the host's mounts made so far before a call into a
// container (a start or an exec), so that the call sees them.
func (p *Pod) syncMounts(ctx context.Context) {
	p.mu.Lock()
	r := p.relay
	p.mu.Unlock()
	p.syncRelay(ctx, r)
}

func (p *Pod) syncRelay(ctx context.Context, r *propagate.Relay) {
	if r == nil {
		return
	}
	if err := r.Sync(ctx); err != nil {
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
