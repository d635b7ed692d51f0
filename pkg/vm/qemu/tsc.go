package qemu

import (
	"math"
	"slices"
	"strconv"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// Under TCG a guest reads the host's TSC (QEMU's rdtsc returns the host
// counter plus an offset), but has to measure its rate at boot against the
// PIT: microvm has no HPET or ACPI PM timer to check it against. On a
// loaded host that measurement fails ("Unable to calibrate against PIT"),
// the guest marks its TSC unstable and falls back to refined-jiffies, which
// needs a periodic tick: an idle guest then takes 250 timer interrupts a
// second for good, and a template built that way passes it on to every
// clone. Measured here during a burst: idle pod VMs at 2.4-6% of a host CPU
// each instead of ~0.1%, which starved the next starts. Telling the guest
// the rate (tsc_early_khz) skips the measurement.

func rdtsc() uint64

var hostTSC struct {
	once sync.Once
	khz  uint64
}

// hostTSCkHz is the host TSC's rate, measured once against the monotonic
// clock (0 if it looks unusable).
func hostTSCkHz() uint64 {
	hostTSC.once.Do(func() {
		// A run preempted between reading the clock and the counter is
		// off; on a loaded host some are. Most runs agree.
		var runs []float64
		for range 5 {
			t0, c0 := time.Now(), rdtsc()
			time.Sleep(40 * time.Millisecond)
			c1, t1 := rdtsc(), time.Now()
			if c1 > c0 {
				runs = append(runs, float64(c1-c0)/float64(t1.Sub(t0).Nanoseconds())*1e6)
			}
		}
		if len(runs) < 3 {
			return
		}
		slices.Sort(runs)
		khz := runs[len(runs)/2]
		agree := 0
		for _, r := range runs {
			if math.Abs(r-khz)/khz < 0.001 {
				agree++
			}
		}
		// Without a steady counter, better a guest that calibrates than
		// one told a wrong rate.
		if agree < 3 || khz < 100_000 {
			klog.InfoS("host TSC rate unsteady; TCG guests calibrate their own", "runs_khz", runs)
			return
		}
		hostTSC.khz = uint64(khz)
		klog.V(1).InfoS("host TSC rate for TCG guests", "khz", hostTSC.khz)
	})
	return hostTSC.khz
}

// tcgTSCArgs are the kernel arguments that give a TCG guest its TSC rate.
func tcgTSCArgs() []string {
	if khz := hostTSCkHz(); khz > 0 {
		return []string{"tsc_early_khz=" + strconv.FormatUint(khz, 10)}
	}
	return nil
}
