package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/hyperlet/hyperlet/pkg/vm"
)

// ReadyFunc reports whether a booted VM's guest is up (its agent answers).
type ReadyFunc func(ctx context.Context, v vm.VM) error

// probeDeadline bounds a probe boot: KVM boots this guest in well under a
// second where it works.
const probeDeadline = 15 * time.Second

// kvmFailures are what QEMU prints when KVM cannot run the guest. QEMU then
// does not exit: the VM sits paused, so the probe must kill it.
var kvmFailures = []string{"KVM internal error", "emulation failure", "kvm run failed"}

// Probe is the outcome of choosing an accelerator.
type Probe struct {
	Accel  vm.Accel `json:"accel"`
	Reason string   `json:"reason"`
	Key    string   `json:"key"`
}

// ResolveAccel turns want into kvm or tcg. For auto it boots base under KVM
// and uses KVM only if ready succeeds; the outcome is cached in cacheFile
// (keyed by kernel, initrd and QEMU binary) so a machine probes once per
// boot when cacheFile is on tmpfs.
func (d *Driver) ResolveAccel(ctx context.Context, want vm.Accel, base vm.Config, ready ReadyFunc, cacheFile string) (Probe, error) {
	switch want {
	case vm.AccelKVM, vm.AccelTCG:
		return Probe{Accel: want, Reason: "configured"}, nil
	case vm.AccelAuto, "":
	default:
		return Probe{}, fmt.Errorf("unknown accelerator %q", want)
	}
	key := d.probeKey(base)
	if cacheFile != "" {
		if b, err := os.ReadFile(cacheFile); err == nil {
			var p Probe
			if json.Unmarshal(b, &p) == nil && p.Key == key {
				p.Reason += " (cached)"
				return p, nil
			}
		}
	}
	p := d.probe(ctx, base, ready)
	p.Key = key
	if cacheFile != "" {
		if b, err := json.Marshal(p); err == nil {
			tmp := cacheFile + ".tmp"
			if os.WriteFile(tmp, b, 0o644) == nil {
				os.Rename(tmp, cacheFile)
			}
		}
	}
	return p, nil
}

func (d *Driver) probeKey(base vm.Config) string {
	var parts []string
	bin := d.Binary
	if bin == "" {
		bin = DefaultBinary
	}
	for _, f := range []string{base.Kernel, base.Initrd, bin} {
		st, err := os.Stat(f)
		if err != nil {
			parts = append(parts, f)
			continue
		}
		parts = append(parts, fmt.Sprintf("%s:%d:%d", f, st.Size(), st.ModTime().UnixNano()))
	}
	return strings.Join(parts, ",")
}

func (d *Driver) probe(ctx context.Context, base vm.Config, ready ReadyFunc) Probe {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return Probe{Accel: vm.AccelTCG, Reason: fmt.Sprintf("KVM unusable: %v", err)}
	}
	f.Close()

	cfg := base
	cfg.ID = "accel-probe"
	cfg.Accel = vm.AccelKVM
	cfg.VCPUs, cfg.MemoryMiB = 1, 128
	dir, err := os.MkdirTemp(filepath.Dir(base.Dir), "probe-")
	if err != nil {
		return Probe{Accel: vm.AccelTCG, Reason: fmt.Sprintf("probe dir: %v", err)}
	}
	defer os.RemoveAll(dir)
	cfg.Dir = filepath.Join(dir, "vm")
	cfg.ConsoleLog = filepath.Join(dir, "console.log")

	ctx, cancel := context.WithTimeout(ctx, probeDeadline)
	defer cancel()
	start := time.Now()
	v, err := d.Start(ctx, cfg)
	if err != nil {
		return Probe{Accel: vm.AccelTCG, Reason: fmt.Sprintf("KVM probe boot failed: %v", err)}
	}
	defer v.Kill()

	// Watch QEMU's error output: on an emulation failure the VM hangs paused.
	errPath := filepath.Join(cfg.Dir, errFile)
	readyErr := make(chan error, 1)
	go func() { readyErr <- ready(ctx, v) }()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-readyErr:
			if err != nil {
				return Probe{Accel: vm.AccelTCG, Reason: fmt.Sprintf("guest did not come up under KVM: %v", err)}
			}
			return Probe{Accel: vm.AccelKVM, Reason: fmt.Sprintf("guest booted under KVM in %v", time.Since(start).Round(time.Millisecond))}
		case <-v.Exited():
			return Probe{Accel: vm.AccelTCG, Reason: fmt.Sprintf("QEMU exited under KVM: %v", v.Wait(context.Background()))}
		case <-tick.C:
			tail := readTail(errPath, 4096)
			for _, s := range kvmFailures {
				if strings.Contains(tail, s) {
					klog.V(2).InfoS("KVM probe failed", "qemu", tail)
					return Probe{Accel: vm.AccelTCG, Reason: fmt.Sprintf("KVM cannot run the guest (%q after %v)", s, time.Since(start).Round(time.Millisecond))}
				}
			}
		}
	}
}
