package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hyperlet/hyperlet/pkg/sandbox"
	"github.com/hyperlet/hyperlet/pkg/template"
	"github.com/hyperlet/hyperlet/pkg/vm"
	"github.com/hyperlet/hyperlet/pkg/vm/qemu"
)

// vmStarts times a pod VM from QEMU's start until its agent answers (and,
// for a clone, has reseeded its CRNG), n times each for a cold boot and a
// template clone, alternating. Same kernel, initrd, size and devices as a
// pod VM; no pod network (the NIC is on no tap).
func (b *bench) vmStarts(ctx context.Context, tcgCacheMiB int, accel vm.Accel) (cold, clone []time.Duration, _ error) {
	dir, err := os.MkdirTemp("/tmp", "hlb-vm-")
	if err != nil {
		return nil, nil, err
	}
	defer os.RemoveAll(dir)
	// The jailed QEMUs (unprivileged uids) bind their files from here.
	if err := os.Chmod(dir, 0o711); err != nil {
		return nil, nil, err
	}
	tplDir := "/dev/shm/hyperlet-bench-vmstart"
	os.RemoveAll(tplDir)
	defer os.RemoveAll(tplDir)
	d := &qemu.Driver{TCGCacheMiB: tcgCacheMiB}
	seq := 0
	cfg := func() vm.Config {
		seq++
		id := fmt.Sprintf("v%d", seq)
		shared := filepath.Join(dir, id+".shared")
		os.MkdirAll(shared, 0o755)
		return vm.Config{ID: id, Dir: filepath.Join(dir, id), ConsoleLog: filepath.Join(dir, id+".console"),
			Kernel: b.cfg.kernel, Initrd: b.cfg.initrd, VCPUs: 1, MemoryMiB: 256, Accel: accel,
			SharedDir: shared, Net: &vm.NetDevice{MAC: vm.RandomMAC()}}
	}
	store, err := template.Open(ctx, d, template.Options{Dir: tplDir, Files: []string{b.cfg.kernel, b.cfg.initrd},
		Ready: sandbox.AgentReady, VMDir: func(id string) string { return filepath.Join(dir, id) }})
	if err != nil {
		return nil, nil, err
	}
	defer store.Close()
	tpl, err := store.Ensure(ctx, cfg())
	if err != nil {
		return nil, nil, err
	}
	start := func(c vm.Config, fromTemplate bool) (time.Duration, error) {
		t0 := time.Now()
		if fromTemplate {
			var err error
			if c, err = store.Clone(c, tpl); err != nil {
				return 0, err
			}
		}
		v, client, err := sandbox.BootVM(ctx, d, c)
		if err != nil {
			return 0, err
		}
		if fromTemplate {
			err = client.AddEntropy(ctx, make([]byte, 64))
		}
		took := time.Since(t0)
		client.Close()
		v.Kill()
		return took, err
	}
	for range b.n {
		t, err := start(cfg(), false)
		if err != nil {
			return nil, nil, fmt.Errorf("cold boot: %w", err)
		}
		cold = append(cold, t)
		t, err = start(cfg(), true)
		if err != nil {
			return nil, nil, fmt.Errorf("clone: %w", err)
		}
		clone = append(clone, t)
	}
	return cold, clone, nil
}
