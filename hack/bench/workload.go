package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

var podSeq atomic.Int64

// pod is one benchmark pod: a sandbox with one idle busybox container.
type pod struct {
	id, ctr string
	cfg     *runtimeapi.PodSandboxConfig
	// Phases of its start: RunPodSandbox, CreateContainer, StartContainer.
	run, create, start time.Duration
}

func (p *pod) total() time.Duration { return p.run + p.create + p.start }

// kubeletNamespaces is what kubelet sends for a pod that asks for no host
// namespaces and does not set shareProcessNamespace: the pod's network and
// IPC namespaces, a PID namespace per container.
func kubeletNamespaces() *runtimeapi.NamespaceOption {
	return &runtimeapi.NamespaceOption{
		Network: runtimeapi.NamespaceMode_POD,
		Pid:     runtimeapi.NamespaceMode_CONTAINER,
		Ipc:     runtimeapi.NamespaceMode_POD,
	}
}

func podConfig(logRoot string) *runtimeapi.PodSandboxConfig {
	n := podSeq.Add(1)
	name := fmt.Sprintf("bench-%d-%d", os.Getpid(), n)
	logDir := filepath.Join(logRoot, name)
	os.MkdirAll(logDir, 0o755)
	return &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "bench", Uid: name, Attempt: 0},
		Hostname:     name,
		LogDirectory: logDir,
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: kubeletNamespaces(),
		}},
	}
}

// startPod runs the workload the latency figures time: RunPodSandbox +
// CreateContainer + StartContainer, which returns once the process runs.
func startPod(ctx context.Context, e *endpoint, logRoot string) (*pod, error) {
	p := &pod{cfg: podConfig(logRoot)}
	t0 := time.Now()
	r, err := e.rs.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: p.cfg, RuntimeHandler: e.handler})
	if err != nil {
		return nil, fmt.Errorf("%s: RunPodSandbox: %w", e.name, err)
	}
	p.id = r.PodSandboxId
	t1 := time.Now()
	c, err := e.rs.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: p.id, SandboxConfig: p.cfg,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "idle"},
			Image:    &runtimeapi.ImageSpec{Image: busyboxImage},
			Command:  []string{"sleep", "86400"},
			LogPath:  "idle.log",
			Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
				NamespaceOptions: kubeletNamespaces(),
			}},
		},
	})
	if err != nil {
		stopPod(context.Background(), e, p)
		return nil, fmt.Errorf("%s: CreateContainer: %w", e.name, err)
	}
	p.ctr = c.ContainerId
	t2 := time.Now()
	if _, err := e.rs.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: p.ctr}); err != nil {
		stopPod(context.Background(), e, p)
		return nil, fmt.Errorf("%s: StartContainer: %w", e.name, err)
	}
	p.run, p.create, p.start = t1.Sub(t0), t2.Sub(t1), time.Since(t2)
	return p, nil
}

// stopPod tears a pod down as kubelet does: StopPodSandbox, then
// RemovePodSandbox (which removes its containers).
func stopPod(ctx context.Context, e *endpoint, p *pod) (time.Duration, error) {
	t0 := time.Now()
	if _, err := e.rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.id}); err != nil {
		return 0, fmt.Errorf("%s: StopPodSandbox: %w", e.name, err)
	}
	if _, err := e.rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.id}); err != nil {
		return 0, fmt.Errorf("%s: RemovePodSandbox: %w", e.name, err)
	}
	return time.Since(t0), nil
}

// parallel calls fn(i) for i in [0, n) from `clients` goroutines and
// returns the first error.
func parallel(n, clients int, fn func(i int) error) error {
	var (
		mu    sync.Mutex
		first error
		next  atomic.Int64
		wg    sync.WaitGroup
	)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				if err := fn(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// startMany starts n pods with `clients` concurrent callers and returns
// them with the wall time taken.
func startMany(ctx context.Context, e *endpoint, logRoot string, n, clients int) ([]*pod, time.Duration, error) {
	var (
		mu   sync.Mutex
		pods []*pod
	)
	t0 := time.Now()
	err := parallel(n, clients, func(int) error {
		p, err := startPod(ctx, e, logRoot)
		if p != nil {
			mu.Lock()
			pods = append(pods, p)
			mu.Unlock()
		}
		return err
	})
	return pods, time.Since(t0), err
}

// stopMany tears pods down with `clients` concurrent callers.
func stopMany(ctx context.Context, e *endpoint, pods []*pod, clients int) (time.Duration, error) {
	t0 := time.Now()
	err := parallel(len(pods), clients, func(i int) error {
		_, err := stopPod(ctx, e, pods[i])
		return err
	})
	return time.Since(t0), err
}

// podPSS is the mean PSS of the pods' host processes, and the part of it
// that is TCG's translation cache (0 for containerd), in MiB.
func podPSS(ctx context.Context, e *endpoint, pods []*pod) (float64, float64, error) {
	var pids []int
	for _, p := range pods {
		ps, err := e.podPIDs(ctx, p.id)
		if err != nil {
			return 0, 0, err
		}
		pids = append(pids, ps...)
	}
	kib, err := pssKiB(pids)
	if err != nil {
		return 0, 0, err
	}
	var tcg int64
	if e.tcgCacheMiB > 0 {
		tcg = tcgCacheKiB(pids, e.tcgCacheMiB)
	}
	n := float64(len(pods)) * 1024
	return float64(kib) / n, float64(tcg) / n, nil
}

// sampleLoad samples the 1-minute load average every second until the
// returned function is called, which returns the highest sample.
func sampleLoad() func() float64 {
	var mu sync.Mutex
	peak := 0.0
	done := make(chan struct{})
	read := func() {
		b, err := os.ReadFile("/proc/loadavg")
		if err != nil {
			return
		}
		f := strings.Fields(string(b))
		if len(f) > 0 {
			if v, err := strconv.ParseFloat(f[0], 64); err == nil {
				mu.Lock()
				peak = max(peak, v)
				mu.Unlock()
			}
		}
	}
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				read()
			}
		}
	}()
	return func() float64 {
		close(done)
		read()
		mu.Lock()
		defer mu.Unlock()
		return peak
	}
}

// podIdleCPU is the host CPU the pods' processes use over d, in % of one
// CPU per pod (utime + stime of every thread, from /proc/PID/stat).
func podIdleCPU(ctx context.Context, e *endpoint, pods []*pod, d time.Duration) (float64, error) {
	var pids []int
	for _, p := range pods {
		ps, err := e.podPIDs(ctx, p.id)
		if err != nil {
			return 0, err
		}
		pids = append(pids, ps...)
	}
	ticks := func() int64 {
		var t int64
		for _, pid := range pids {
			if n, ok := statTicks(fmt.Sprintf("/proc/%d/stat", pid)); ok {
				t += n
			}
		}
		return t
	}
	t0, start := ticks(), time.Now()
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-time.After(d):
	}
	used := float64(ticks()-t0) / userHZ
	return used / time.Since(start).Seconds() * 100 / float64(len(pods)), nil
}

// stats are order statistics of a sample, in milliseconds.
type stats struct {
	n                     int
	min, median, p95, max float64
	all                   []float64
}

func summarize(ds []time.Duration) stats {
	v := make([]float64, len(ds))
	for i, d := range ds {
		v[i] = float64(d.Microseconds()) / 1000
	}
	sort.Float64s(v)
	if len(v) == 0 {
		return stats{}
	}
	// Nearest-rank percentiles.
	rank := func(p float64) float64 {
		i := int(p*float64(len(v))+0.999999) - 1
		return v[max(0, min(i, len(v)-1))]
	}
	return stats{n: len(v), min: v[0], median: rank(0.5), p95: rank(0.95), max: v[len(v)-1], all: v}
}

// hyperctlRun times `hyperctl run --rm IMAGE echo hi` against e: what a user
// waits for a one-off command, pod and container creation, the run, the
// output and the teardown included. hyperctl speaks plain CRI, so it drives
// every runtime alike.
func hyperctlRun(ctx context.Context, hyperctl string, e *endpoint) (time.Duration, error) {
	args := []string{"--endpoint", e.socket, "run", "--rm"}
	if e.handler != "" {
		args = append(args, "--runtime", e.handler)
	}
	args = append(args, busyboxImage, "echo", "hi")
	t0 := time.Now()
	out, err := exec.CommandContext(ctx, hyperctl, args...).CombinedOutput()
	d := time.Since(t0)
	if err != nil || strings.TrimSpace(string(out)) != "hi" {
		return 0, fmt.Errorf("%s: hyperctl %s: %v: %q", e.name, strings.Join(args, " "), err, out)
	}
	return d, nil
}
