package sandbox

import (
	"sync"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// events fans container lifecycle events out to GetContainerEvents
// subscribers. A subscriber that does not keep up loses events rather than
// stalling the runtime.
type events struct {
	mu   sync.Mutex
	subs map[chan *runtime.ContainerEventResponse]struct{}
}

func (e *events) publish(ev *runtime.ContainerEventResponse) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for ch := range e.subs {
		select {
		case ch <- ev:
		default:
		}
	}
}

// Subscribe returns a channel of events and a function that ends the
// subscription.
func (m *Manager) Subscribe() (<-chan *runtime.ContainerEventResponse, func()) {
	ch := make(chan *runtime.ContainerEventResponse, 256)
	e := &m.events
	e.mu.Lock()
	if e.subs == nil {
		e.subs = map[chan *runtime.ContainerEventResponse]struct{}{}
	}
	e.subs[ch] = struct{}{}
	e.mu.Unlock()
	return ch, func() {
		e.mu.Lock()
		delete(e.subs, ch)
		e.mu.Unlock()
	}
}
