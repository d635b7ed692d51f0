package sandbox

import (
	"context"
	"fmt"
	"sync/atomic"
)

// gate bounds how many starts run at once; the rest wait their turn in
// arrival order (as far as the Go scheduler keeps it), so a burst of pod
// creations queues instead of starving every VM of the host's CPUs at once.
// A nil gate admits everything.
type gate struct {
	slots   chan struct{}
	waiting atomic.Int64
	what    string
}

func newGate(what string, n int) *gate {
	if n <= 0 {
		return nil
	}
	return &gate{slots: make(chan struct{}, n), what: what}
}

// enter waits for a slot or for ctx to end.
func (g *gate) enter(ctx context.Context) error {
	if g == nil {
		return nil
	}
	select {
	case g.slots <- struct{}{}:
		return nil
	default:
	}
	g.waiting.Add(1)
	defer g.waiting.Add(-1)
	select {
	case g.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for one of %d %s slots: %w", cap(g.slots), g.what, ctx.Err())
	}
}

func (g *gate) leave() {
	if g != nil {
		<-g.slots
	}
}

// GateStatus is a gate's occupancy.
type GateStatus struct {
	Limit   int   `json:"limit"`
	Running int   `json:"running"`
	Waiting int64 `json:"waiting"`
}

func (g *gate) status() GateStatus {
	if g == nil {
		return GateStatus{}
	}
	return GateStatus{Limit: cap(g.slots), Running: len(g.slots), Waiting: g.waiting.Load()}
}
