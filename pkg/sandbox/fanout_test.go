package sandbox

import (
	"bytes"
	"sync"
	"testing"
	"time"
)

// blockingWriter never returns from Write until released.
type blockingWriter struct{ release chan struct{} }

func (b *blockingWriter) Write(p []byte) (int, error) { <-b.release; return len(p), nil }

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Len()
}

func TestFanoutCutsOffStalledClient(t *testing.T) {
	var f fanout
	stalled := &blockingWriter{release: make(chan struct{})}
	removeStalled, cut := f.add(stalled)
	var fast syncBuffer
	removeFast, fastCut := f.add(&fast)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range attachQueue * 2 {
			f.Write([]byte("x"))
			// A client that keeps up: it has each chunk before the next.
			for deadline := time.Now().Add(5 * time.Second); fast.Len() <= i && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond / 10)
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("a stalled client blocked the writer")
	}
	select {
	case <-cut:
	default:
		t.Fatal("the stalled client was not cut off")
	}
	close(stalled.release)
	removeStalled()
	removeFast() // waits for the fast client's queue to drain
	if fast.Len() != attachQueue*2 {
		t.Errorf("the fast client got %d bytes, want %d", fast.Len(), attachQueue*2)
	}
	select {
	case <-fastCut:
		t.Error("the fast client was cut off")
	default:
	}
}
