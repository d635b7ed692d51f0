package sandbox

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"k8s.io/klog/v2"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
	"github.com/hyperlet/hyperlet/pkg/agent"
	"github.com/hyperlet/hyperlet/pkg/cni"
	"github.com/hyperlet/hyperlet/pkg/vm"
)

// How a pod's VM came to be, as pod status reports it.
const (
	BootCold     = "boot"     // booted the kernel
	BootTemplate = "template" // resumed from a VM template
	BootPool     = "pool"     // taken from the warm pool
)

var poolBucket = []byte("pool")

// warmVM is a VM started before any pod asked for it: agent ready, its NIC
// on a tap in the host's namespace that RunPod moves into the pod's.
type warmVM struct {
	Config vm.Config `json:"vm"`
	Tap    string    `json:"tap"`
	Boot   string    `json:"boot"`

	vm     vm.VM
	client *agent.Client
}

// pool keeps warm VMs of the base size ready for RunPod and refills in the
// background, one VM at a time.
type pool struct {
	m    *Manager
	size int

	mu       sync.Mutex
	ready    []*warmVM
	starting bool
	closed   bool
	running  sync.WaitGroup // the refill goroutine
	hits     int
	misses   int
}

// startVM boots cfg, resuming from a VM template when one is ready (and
// asking for one to be built when not). A clone's CRNG is reseeded before
// anything runs in it. It returns the configuration the VM runs with.
func (m *Manager) startVM(ctx context.Context, cfg vm.Config) (vm.VM, *agent.Client, vm.Config, string, error) {
	start := time.Now()
	v, c, vc, boot, err := m.bootOrClone(ctx, cfg)
	if err == nil && m.cfg.ObserveVMStart != nil {
		m.cfg.ObserveVMStart(boot, time.Since(start))
	}
	return v, c, vc, boot, err
}

// bootOrClone is startVM without the measuring.
func (m *Manager) bootOrClone(ctx context.Context, cfg vm.Config) (vm.VM, *agent.Client, vm.Config, string, error) {
	if ts := m.cfg.Templates; ts != nil {
		if t, ok := ts.Lookup(cfg); ok {
			clone, err := ts.Clone(cfg, t)
			var (
				v vm.VM
				c *agent.Client
			)
			if err == nil {
				v, c, err = BootVM(ctx, m.hv, clone)
			}
			if err == nil {
				seed := make([]byte, 64)
				rand.Read(seed)
				if err = c.AddEntropy(ctx, seed); err == nil {
					return v, c, clone, BootTemplate, nil
				}
				c.Close()
				v.Kill()
			}
			// A template that cannot be resumed must not stop pods.
			klog.ErrorS(err, "resume from VM template failed; booting", "vm", cfg.ID, "template", t.Key)
		} else {
			ts.Prepare(cfg)
		}
	}
	v, c, err := BootVM(ctx, m.hv, cfg)
	return v, c, cfg, BootCold, err
}

func newPool(m *Manager, size int) *pool { return &pool{m: m, size: size} }

// fits says whether a warm VM can serve a pod sized cfg.
func fits(w, cfg vm.Config) bool {
	return w.VCPUs == cfg.VCPUs && w.MemoryMiB == cfg.MemoryMiB && w.Accel == cfg.Accel &&
		w.Kernel == cfg.Kernel && w.Initrd == cfg.Initrd && slices.Equal(w.KernelArgs, cfg.KernelArgs)
}

// take hands out a live warm VM that fits cfg, or nil. The caller owns it
// and must call adopted once the pod's record refers to it.
func (pl *pool) take(cfg vm.Config) *warmVM {
	if pl == nil || pl.size == 0 {
		return nil
	}
	pl.mu.Lock()
	defer func() {
		pl.mu.Unlock()
		pl.refill()
	}()
	for i := 0; i < len(pl.ready); i++ {
		w := pl.ready[i]
		select {
		case <-w.vm.Exited():
			klog.InfoS("warm VM died; dropping it", "vm", w.Config.ID)
			pl.ready = slices.Delete(pl.ready, i, i+1)
			i--
			go pl.discard(w)
			continue
		default:
		}
		if fits(w.Config, cfg) {
			pl.ready = slices.Delete(pl.ready, i, i+1)
			pl.hits++
			return w
		}
	}
	pl.misses++
	return nil
}

// adopted forgets a warm VM's pool record: its pod's record now owns it.
// A record left by a failed delete is harmless: recoverPool leaves a VM a
// pod record names alone.
func (pl *pool) adopted(w *warmVM) {
	if err := pl.m.db.delete(poolBucket, w.Config.ID); err != nil {
		klog.ErrorS(err, "delete pool record of an adopted VM", "vm", w.Config.ID)
	}
}

// refill starts one warm VM in the background if the pool is short.
func (pl *pool) refill() {
	if pl == nil || pl.size == 0 {
		return
	}
	pl.mu.Lock()
	if pl.closed || pl.starting || len(pl.ready) >= pl.size {
		pl.mu.Unlock()
		return
	}
	pl.starting = true
	pl.running.Add(1)
	pl.mu.Unlock()
	go func() {
		defer pl.running.Done()
		w, err := pl.start()
		pl.mu.Lock()
		pl.starting = false
		closed := pl.closed
		if err == nil && !closed {
			pl.ready = append(pl.ready, w)
		}
		pl.mu.Unlock()
		if err != nil {
			klog.ErrorS(err, "start warm VM")
			time.AfterFunc(10*time.Second, pl.refill)
			return
		}
		if closed {
			pl.discard(w)
			return
		}
		pl.refill()
	}()
}

// start boots one warm VM of the base size.
func (pl *pool) start() (_ *warmVM, retErr error) {
	m := pl.m
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	id := newID()[:16]
	cfg, err := m.baseVM(ctx, id)
	if err != nil {
		return nil, err
	}
	cfg.ConsoleLog = filepath.Join(m.cfg.Root, "pool", id+".console")
	w := &warmVM{Tap: "hlw" + id[:12], Config: cfg}
	if err := os.MkdirAll(filepath.Dir(cfg.ConsoleLog), 0o700); err != nil {
		return nil, err
	}
	if err := makeShared(cfg.SharedDir); err != nil {
		return nil, err
	}
	// The record goes first: a daemon killed from here on finds and
	// removes the VM, its tap and its files on restart.
	if err := m.db.put(poolBucket, id, w); err != nil {
		return nil, err
	}
	defer undo(&retErr, func() {
		pl.discard(w)
	})
	tap, err := cni.NewTap(w.Tap)
	if err != nil {
		return nil, err
	}
	defer tap.Close() // QEMU holds its own copy
	cfg.Net.Tap = tap
	if ts := m.cfg.Templates; ts != nil {
		// Warm VMs are worth most as clones: wait for the template.
		if _, err := ts.Ensure(ctx, cfg); err != nil {
			klog.ErrorS(err, "VM template for warm VMs; booting them instead")
		}
	}
	// Warm VMs take their turn with pods' VMs.
	if err := m.podStarts.enter(ctx); err != nil {
		return nil, err
	}
	v, c, cfg, boot, err := m.startVM(ctx, cfg)
	m.podStarts.leave()
	if err != nil {
		return nil, err
	}
	w.vm, w.client, w.Config, w.Boot = v, c, cfg, boot
	// What a pod's setup does that does not depend on the pod is done
	// now: the shared directory's 9p mount (~0.13 s under TCG), the pod's
	// shm, the loopback, and the NIC brought up without addresses (the
	// kernel's link start delayed the pod's routes by 50-100 ms). The
	// pod's own setup skips what is done.
	prep := &agent.PodSetup{SharedFs: true}
	if cfg.Net != nil {
		prep.Interfaces = []*agentapi.Interface{{Mac: cfg.Net.MAC, Prepare: true}}
	}
	if err := c.SetupPod(ctx, prep); err != nil {
		return nil, fmt.Errorf("prepare warm VM: %w", err)
	}
	if err := m.db.put(poolBucket, id, w); err != nil {
		return nil, err
	}
	klog.V(2).InfoS("warm VM ready", "vm", id, "boot", boot)
	return w, nil
}

// discard stops a warm VM and removes its tap, files and record.
func (pl *pool) discard(w *warmVM) {
	if w.client != nil {
		w.client.Close()
	}
	if w.vm != nil {
		w.vm.Kill()
	}
	removeWarmFiles(pl.m, w)
}

func removeWarmFiles(m *Manager, w *warmVM) {
	if l, err := netlink.LinkByName(w.Tap); err == nil {
		netlink.LinkDel(l)
	}
	os.Remove(w.Config.ConsoleLog)
	if w.Config.SharedDir != "" {
		removeShared(w.Config.SharedDir)
	}
	os.RemoveAll(w.Config.Dir)
	if err := m.db.delete(poolBucket, w.Config.ID); err != nil {
		klog.ErrorS(err, "delete warm VM record; the next start removes it again", "vm", w.Config.ID)
	}
}

// close stops every warm VM: unlike pods', they are not worth keeping
// across a restart.
func (pl *pool) close() {
	if pl == nil {
		return
	}
	pl.mu.Lock()
	pl.closed = true
	ready := pl.ready
	pl.ready = nil
	pl.mu.Unlock()
	for _, w := range ready {
		pl.discard(w)
	}
	pl.running.Wait() // a VM being started is discarded when it is up
}

// PoolStatus reports the warm pool's size, ready VMs, hits and misses.
type PoolStatus struct {
	Size   int `json:"size"`
	Ready  int `json:"ready"`
	Hits   int `json:"hits"`
	Misses int `json:"misses"`
}

func (pl *pool) status() PoolStatus {
	if pl == nil {
		return PoolStatus{}
	}
	pl.mu.Lock()
	defer pl.mu.Unlock()
	return PoolStatus{Size: pl.size, Ready: len(pl.ready), Hits: pl.hits, Misses: pl.misses}
}
