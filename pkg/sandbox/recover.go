package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"

	"github.com/hyperlet/hyperlet/pkg/agent"
	"github.com/hyperlet/hyperlet/pkg/cni"
	"github.com/hyperlet/hyperlet/pkg/crilog"
	"github.com/hyperlet/hyperlet/pkg/vm"
)

// A restarted daemon takes over what the records name and removes what
// they do not: every side effect is recorded (or its intent is) before it
// happens, so whatever a killed daemon left is either in a record or
// found here by the ID scheme of its directories.

// Recovery bounds: how many pods are taken over at once, and how long one
// pod's agent may take to answer.
const (
	recoverParallel = 8
	recoverAgent    = 10 * time.Second
)

// recover loads the records, takes over the VMs that still run (in
// parallel, each bounded), finishes or undoes the container steps a killed
// daemon left half done, and sweeps what no record owns.
func (m *Manager) recover(ctx context.Context) error {
	var pods []*podRecord
	if err := each(m.db, podsBucket, func(r *podRecord) { pods = append(pods, r) }); err != nil {
		return err
	}
	var ctrs []*containerRecord
	if err := each(m.db, containersBucket, func(r *containerRecord) { ctrs = append(ctrs, r) }); err != nil {
		return err
	}
	restored := make([]*Pod, len(pods))
	sem := make(chan struct{}, recoverParallel)
	var wg sync.WaitGroup
	for i, r := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			p, err := m.restorePod(ctx, r)
			if err != nil {
				klog.ErrorS(err, "quarantining a pod record that cannot be restored", "pod", r.ID)
				if err := m.db.quarantine(podsBucket, r.ID); err != nil {
					klog.ErrorS(err, "quarantine pod record", "pod", r.ID)
				}
				m.sweepNetwork(ctx, r.ID) // its VM and files go in the sweep
				return
			}
			restored[i] = p
		}()
	}
	wg.Wait()
	for _, p := range restored {
		if p != nil {
			m.pods[p.ID()] = p
			m.names[p.name()] = p.ID()
		}
	}
	for _, r := range ctrs {
		p, ok := m.pods[r.PodID]
		if !ok {
			klog.InfoS("dropping container of a missing pod", "container", r.ID, "pod", r.PodID)
			if err := m.db.delete(containersBucket, r.ID); err != nil {
				klog.ErrorS(err, "delete container record of a missing pod", "container", r.ID)
			}
			continue
		}
		c, err := m.restoreContainer(ctx, p, r)
		if err != nil {
			klog.ErrorS(err, "quarantining a container record that cannot be restored", "container", r.ID)
			if err := m.db.quarantine(containersBucket, r.ID); err != nil {
				klog.ErrorS(err, "quarantine container record", "container", r.ID)
			}
			continue
		}
		if c == nil {
			continue // a creation the daemon was killed in, undone
		}
		m.ctrs[c.ID()] = c
		m.names[c.name()] = c.ID()
	}
	for _, p := range restored {
		if p != nil && p.repause {
			p.repause = false
			if err := m.PausePod(ctx, p.ID()); err != nil {
				klog.ErrorS(err, "pause again a pod VM left paused", "pod", p.ID())
			}
		}
	}
	klog.InfoS("restored runtime state", "pods", len(m.pods), "containers", len(m.ctrs))
	return nil
}

// restorePod rebuilds a pod from its record and takes over its VM.
func (m *Manager) restorePod(ctx context.Context, r *podRecord) (*Pod, error) {
	cfg := &runtime.PodSandboxConfig{}
	if err := proto.Unmarshal(r.Config, cfg); err != nil {
		return nil, fmt.Errorf("decode pod config: %w", err)
	}
	if r.Images == nil {
		r.Images = map[string]vm.DiskAddr{}
	}
	p := &Pod{m: m, cfg: cfg, rec: *r, hooksStopped: r.State != runtime.PodSandboxState_SANDBOX_READY}
	v, err := m.hv.Attach(ctx, r.VM)
	if err != nil {
		if p.rec.State == runtime.PodSandboxState_SANDBOX_READY {
			klog.InfoS("pod VM is gone; pod is not ready", "pod", r.ID, "err", err)
			p.setStateLocked(runtime.PodSandboxState_SANDBOX_NOTREADY)
		}
		return p, nil
	}
	if p.rec.State != runtime.PodSandboxState_SANDBOX_READY {
		// A VM left by a daemon killed while booting or stopping it.
		klog.InfoS("stopping leftover VM of a pod that is not ready", "pod", r.ID)
		v.Kill()
		v.Wait(ctx)
		return p, nil
	}
	actx, cancel := context.WithTimeout(ctx, recoverAgent)
	defer cancel()
	// A VM left paused (or stopped by a pause cut short) runs while the
	// daemon reconnects to it and its containers; one that was paused is
	// paused again then (recover). cont is harmless on a running VM.
	if pv, ok := v.(vm.Pauser); ok {
		if err := pv.Resume(actx); err != nil {
			klog.ErrorS(err, "resume pod VM to restore it", "pod", r.ID)
		}
	}
	if p.rec.Paused {
		p.rec.Paused, p.repause = false, true
	}
	client, err := WaitAgent(actx, v)
	if err != nil {
		klog.ErrorS(err, "pod agent does not answer; stopping the VM", "pod", r.ID)
		v.Kill()
		v.Wait(ctx)
		p.setStateLocked(runtime.PodSandboxState_SANDBOX_NOTREADY)
		return p, nil
	}
	p.vm, p.agent = v, client
	go p.watchVM(v)
	return p, nil
}

// restoreContainer rebuilds a container from its record and, if it was
// running, resumes watching it. A container whose creation was cut short
// is removed (nil, nil); one whose start was is asked about in the guest.
func (m *Manager) restoreContainer(ctx context.Context, p *Pod, r *containerRecord) (*Container, error) {
	cfg := &runtime.ContainerConfig{}
	if err := proto.Unmarshal(r.Config, cfg); err != nil {
		return nil, fmt.Errorf("decode container config: %w", err)
	}
	c := newContainer(m, p, cfg, *r)
	if propagates(cfg.Mounts) {
		p.relayMounts(ctx)
	}
	client, clientErr := p.client()
	switch r.Intent {
	case IntentCreate:
		klog.InfoS("undoing a container creation a killed daemon left", "container", r.ID)
		if clientErr == nil {
			rctx, cancel := context.WithTimeout(ctx, agentCallTimeout)
			err := client.RemoveContainer(rctx, r.ID)
			cancel()
			if err != nil {
				return nil, fmt.Errorf("remove half-created container in the guest: %w", err)
			}
		}
		if p.rec.VM.SharedDir != "" {
			if err := unshareMounts(p.rec.VM.SharedDir, r.ID[:16]+"-"); err != nil {
				return nil, err
			}
		}
		return nil, m.db.delete(containersBucket, r.ID)
	case IntentStart:
		c.rec.Intent = ""
		if clientErr == nil && startedInGuest(ctx, client.Process(r.ID)) {
			klog.InfoS("a start a killed daemon left went through", "container", r.ID)
			c.rec.State = runtime.ContainerState_CONTAINER_RUNNING
			c.rec.StartedAt = time.Now().UnixNano() // the guest's start time is not kept
		}
		c.logPersistLocked()
	}
	var releases []func()
	for _, img := range append([]string{r.ImageID}, r.VolumeImages...) {
		if release, err := m.images.Acquire(img); err == nil {
			releases = append(releases, release)
		} else {
			klog.ErrorS(err, "pin image of restored container", "container", r.ID, "image", img)
		}
	}
	c.release = func() {
		for _, r := range releases {
			r()
		}
	}
	if c.rec.State != runtime.ContainerState_CONTAINER_RUNNING {
		return c, nil
	}
	if clientErr != nil {
		c.rec.State = runtime.ContainerState_CONTAINER_EXITED
		c.rec.FinishedAt = time.Now().UnixNano()
		c.rec.ExitCode, c.rec.Reason = 255, "Error"
		c.rec.Message = "the pod VM stopped while hyperlet was down"
		c.logPersistLocked()
		return c, nil
	}
	var log *crilog.File
	if c.rec.LogPath != "" {
		var err error
		if log, err = crilog.Open(c.rec.LogPath); err != nil {
			klog.ErrorS(err, "reopen container log", "container", r.ID)
			log = nil
		}
	}
	proc := client.Process(r.ID)
	c.log, c.proc, c.done = log, proc, make(chan struct{})
	go m.monitor(c, proc, log, true)
	return c, nil
}

// startedInGuest says whether the guest has the container's process (it
// ran, and may have exited since): the agent forgets a start that failed.
func startedInGuest(ctx context.Context, p *agent.Process) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err := p.Wait(ctx)
	if err == nil {
		return true // exited already; the monitor records how
	}
	if agent.GuestCode(err) == codes.NotFound {
		return false
	}
	// Still running when the wait gave up, or unknown: the monitor finds
	// out (and records the container lost if the agent is).
	return true
}

// recoverPool removes warm VMs a previous daemon left. One that a pod had
// adopted (its pool record not yet deleted) is the pod's and stays.
func (m *Manager) recoverPool(ctx context.Context) error {
	var left []*warmVM
	if err := each(m.db, poolBucket, func(w *warmVM) { left = append(left, w) }); err != nil {
		return err
	}
	owned := m.ownedVMs()
	for _, w := range left {
		if owned[w.Config.ID] {
			if err := m.db.delete(poolBucket, w.Config.ID); err != nil {
				klog.ErrorS(err, "delete pool record of an adopted VM", "vm", w.Config.ID)
			}
			continue
		}
		if v, err := m.hv.Attach(ctx, w.Config); err == nil {
			v.Kill()
		}
		removeWarmFiles(m, w)
	}
	if len(left) > 0 {
		klog.InfoS("removed warm VMs left by a previous daemon", "count", len(left))
	}
	return nil
}

// ownedVMs are the IDs of the VMs pod records name.
func (m *Manager) ownedVMs() map[string]bool {
	owned := map[string]bool{}
	for _, p := range m.pods {
		owned[p.rec.VM.ID] = true
	}
	return owned
}

// sweepable matches the IDs this package gives VMs (pods' and warm VMs',
// 16 hex digits) and template builds: what else is under the VM root (the
// accelerator probe) is not the sweep's.
var sweepable = regexp.MustCompile(`^([0-9a-f]{16}|tpl-[0-9a-f]+)$`)

// sweep removes what a killed daemon left that no record owns: VMs (their
// QEMU, directory and cgroup), pod directories, shared directories and
// warm VMs' files. It runs after recover and recoverPool, before anything
// new starts.
func (m *Manager) sweep(ctx context.Context) {
	owned := m.ownedVMs()
	vmRoot := filepath.Dir(m.cfg.VM("sweep").Dir)
	ids, err := m.hv.Sweep(ctx, vmRoot, func(id string) bool { return owned[id] || !sweepable.MatchString(id) })
	if err != nil {
		klog.ErrorS(err, "sweep VMs no record owns")
	}
	if len(ids) > 0 {
		klog.InfoS("removed VMs no record owned", "vms", ids)
	}
	pods := map[string]bool{}
	shared := map[string]bool{}
	for id, p := range m.pods {
		pods[id] = true
		shared[filepath.Base(p.rec.VM.SharedDir)] = true
	}
	m.sweepDir(filepath.Join(m.cfg.Root, "pods"), func(name string) bool { return pods[name] }, os.RemoveAll)
	m.sweepDir(m.cfg.SharedRoot, func(name string) bool { return shared[name] }, removeShared)
	m.sweepDir(filepath.Join(m.cfg.Root, "pool"), func(string) bool { return false }, os.RemoveAll)
}

// sweepDir removes, with remove, the entries of dir keep rejects.
func (m *Manager) sweepDir(dir string, keep func(name string) bool, remove func(string) error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			klog.ErrorS(err, "sweep", "dir", dir)
		}
		return
	}
	for _, e := range ents {
		if keep(e.Name()) {
			continue
		}
		path := filepath.Join(dir, e.Name())
		klog.InfoS("removing what no record owns", "path", path)
		if err := remove(path); err != nil {
			klog.ErrorS(err, "sweep", "path", path)
		}
	}
}

// sweepNetwork tears down the network of a pod whose record was
// quarantined: CNI DEL by the pod's ID (which is what plugins key leases
// and port mappings by), then its namespace.
func (m *Manager) sweepNetwork(ctx context.Context, podID string) {
	if m.cfg.Network == nil || len(podID) < 16 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, teardownTimeout)
	defer cancel()
	if err := m.cfg.Network.Detach(ctx, cni.Pod{ID: podID}, netnsName(podID)); err != nil {
		klog.ErrorS(err, "tear down the network of a quarantined pod; its namespace stays", "pod", podID, "netns", netnsName(podID))
	}
}
