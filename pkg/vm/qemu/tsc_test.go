package qemu

import (
	"strings"
	"testing"
)

func TestHostTSCRate(t *testing.T) {
	khz := hostTSCkHz()
	// Any x86-64 host this runs on has an invariant TSC between 0.5 and
	// 10 GHz; an unsteady one leaves the guest to calibrate (0).
	if khz != 0 && (khz < 500_000 || khz > 10_000_000) {
		t.Fatalf("host TSC %d kHz", khz)
	}
	args := tcgTSCArgs()
	if khz != 0 && (len(args) != 1 || !strings.HasPrefix(args[0], "tsc_early_khz=")) {
		t.Fatalf("TCG guest args %v", args)
	}
	t.Logf("host TSC: %d kHz", khz)
}
