package sandbox

import "time"

// phases times the steps of one start call for Config.ObservePhase: each
// step lasts from the previous one's end to its own.
type phases struct {
	observe func(call, phase string, d time.Duration)
	call    string
	last    time.Time
}

func (m *Manager) phases(call string) *phases {
	return &phases{observe: m.cfg.ObservePhase, call: call, last: time.Now()}
}

// done ends the step named phase.
func (p *phases) done(phase string) {
	if p.observe == nil {
		return
	}
	now := time.Now()
	p.observe(p.call, phase, now.Sub(p.last))
	p.last = now
}
