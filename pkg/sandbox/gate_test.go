package sandbox

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestGateBoundsConcurrency(t *testing.T) {
	for _, limit := range []int{1, 2, 5} {
		g := newGate("test", limit)
		var running, peak atomic.Int64
		var wg sync.WaitGroup
		for range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := g.enter(context.Background()); err != nil {
					t.Error(err)
					return
				}
				n := running.Add(1)
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				time.Sleep(time.Millisecond)
				running.Add(-1)
				g.leave()
			}()
		}
		wg.Wait()
		if p := peak.Load(); p > int64(limit) || p < 1 {
			t.Errorf("limit %d: peak %d running", limit, p)
		}
		if st := g.status(); st.Running != 0 || st.Waiting != 0 {
			t.Errorf("limit %d: after the burst %+v", limit, st)
		}
	}
}

func TestGateWaitEndsWithContext(t *testing.T) {
	g := newGate("test", 1)
	g.enter(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := g.enter(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("enter on a full gate: %v", err)
	}
	g.leave()
	if err := g.enter(context.Background()); err != nil {
		t.Fatal(err)
	}
	var nilGate *gate // no limit
	if err := nilGate.enter(ctx); err != nil {
		t.Fatal(err)
	}
	nilGate.leave()
}
