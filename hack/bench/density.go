package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hyperlet/hyperlet/pkg/vm/qemu"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// density ramps hyperlet (default configuration: templates and a warm
// pool) up to n idle pods, checks every pod is Ready and answers an exec,
// samples memory, then tears everything down and checks nothing is left.
func (b *bench) density(ctx context.Context, n int, out string) error {
	m := hyperletMode{name: "density", templates: true, pool: 1}
	e, err := startHyperlet(ctx, b.bin, b.work, b.cniDir, b.registry, m, b.cfg)
	if err != nil {
		return err
	}
	b.endpoints = append(b.endpoints, e)
	if err := b.pull(ctx, e); err != nil {
		return err
	}
	if err := e.waitWarm(ctx, m); err != nil {
		return err
	}
	env := describeEnv(ctx, e)
	fmt.Print(env.header())
	availBefore := memAvailableMiB()

	const step = 25
	var pods []*pod
	load := sampleLoad()
	t0 := time.Now()
	for len(pods) < n {
		// Stop short rather than let the node run out of memory: the
		// next step must leave headroom at the last step's cost per pod.
		if len(pods) > 0 {
			avail := memAvailableMiB()
			per := (availBefore - avail) / int64(len(pods))
			if left := avail - per*step; left < densityHeadroomMiB {
				stopMany(ctx, e, pods, 4)
				return fmt.Errorf("after %d pods (%d MiB each): %d more would leave %d MiB of host memory, under %d MiB", len(pods), per, step, left, densityHeadroomMiB)
			}
		}
		more, took, err := startMany(ctx, e, b.logs, min(step, n-len(pods)), 4)
		pods = append(pods, more...)
		if err != nil {
			stopMany(ctx, e, pods, 4)
			return fmt.Errorf("after %d pods: %w", len(pods), err)
		}
		fmt.Printf("  %d pods (+%d in %s), host MemAvailable %d MiB\n", len(pods), len(more), took.Round(time.Millisecond), memAvailableMiB())
	}
	ramp, rampLoad := time.Since(t0), load()

	// Every pod Ready and exec-able, checked by 4 clients as a node's
	// probes would be.
	t1 := time.Now()
	err = parallel(len(pods), 4, func(i int) error {
		p := pods[i]
		st, err := e.rs.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: p.id})
		if err != nil || st.Status.State != runtimeapi.PodSandboxState_SANDBOX_READY {
			return fmt.Errorf("pod %s not ready: %v %v", p.id, st.GetStatus().GetState(), err)
		}
		r, err := e.rs.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: p.ctr, Cmd: []string{"cat", "/proc/loadavg"}, Timeout: 60})
		if err != nil || r.ExitCode != 0 || len(r.Stdout) == 0 {
			return fmt.Errorf("exec in pod %s: %v %v", p.id, r, err)
		}
		return nil
	})
	if err != nil {
		stopMany(ctx, e, pods, 4)
		return err
	}
	checked := time.Since(t1)
	pss, err := settledPSS(ctx, e, pods)
	if err != nil {
		return err
	}
	availAt := memAvailableMiB()
	// What the idle pods cost the node: its busy CPU over 30 s, once the
	// checks' load has passed.
	idle, err := idleBusy(ctx, 30*time.Second)
	if err != nil {
		return err
	}
	tplMiB := float64(readVMStatus(ctx, e).TemplateBytes) / (1 << 20)

	t2 := time.Now()
	if _, err := stopMany(ctx, e, pods, 4); err != nil {
		return err
	}
	down := time.Since(t2)
	list, err := e.rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return err
	}
	leftVMs := len(qemu.RunningPIDs(filepath.Join(b.work, m.name, "state", "vms"))) - readVMStatus(ctx, e).Pool.Ready
	leftNS := 0
	if ents, err := os.ReadDir("/var/run/netns"); err == nil {
		for _, ent := range ents {
			if strings.HasPrefix(ent.Name(), "hyperlet-") {
				leftNS++
			}
		}
	}
	var s strings.Builder
	fmt.Fprintf(&s, "# hyperlet density: %d idle pods\n\n", n)
	fmt.Fprintf(&s, "Measured %s on %s, **accelerator: %s**, %s CPUs, %s RAM; hyperlet defaults (VM templates, warm pool of 1), "+
		"each pod one busybox `sleep` container.\n\n", env.when, env.host, strings.ToUpper(env.accel), env.cpus, env.mem)
	fmt.Fprintf(&s, "| measure | value |\n|---|---:|\n")
	fmt.Fprintf(&s, "| pods started (4 concurrent clients) | %d in %s (%.2f pods/s) |\n", len(pods), ramp.Round(time.Second), float64(len(pods))/ramp.Seconds())
	fmt.Fprintf(&s, "| all Ready and answering ExecSync (4 clients) | yes, checked in %s |\n", checked.Round(time.Millisecond))
	fmt.Fprintf(&s, "| PSS per idle pod (its QEMU) | %.1f MiB, of which %.1f MiB TCG translation cache |\n", pss.pss, pss.tcg)
	fmt.Fprintf(&s, "| template RAM files on tmpfs | %.1f MiB |\n", tplMiB)
	fmt.Fprintf(&s, "| host MemAvailable before / with %d pods | %d / %d MiB (%.1f MiB per pod) |\n", n, availBefore, availAt, float64(availBefore-availAt)/float64(n))
	fmt.Fprintf(&s, "| highest 1-minute load average while ramping up | %.1f |\n", rampLoad)
	fmt.Fprintf(&s, "| node CPU busy with %d idle pods (30 s, all CPUs) | %.1f %% (%.2f %% of one CPU per pod) |\n", n, idle, idle*float64(cpuCount())/float64(n))
	fmt.Fprintf(&s, "| teardown of all (4 clients) | %s |\n", down.Round(time.Second))
	fmt.Fprintf(&s, "| left after teardown: pods, pod QEMUs, netns | %d, %d, %d |\n", len(list.Items), leftVMs, leftNS)
	fmt.Println()
	fmt.Print(s.String())
	if len(list.Items) != 0 || leftVMs != 0 || leftNS != 0 {
		return fmt.Errorf("teardown left pods, VMs or namespaces")
	}
	if out != "" {
		if err := os.MkdirAll(out, 0o755); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(out, "density.md"), []byte(s.String()), 0o644)
	}
	return nil
}

// idleBusy is the machine's busy share of all CPUs over d, in %.
func idleBusy(ctx context.Context, d time.Duration) (float64, error) {
	t0, start := hostBusyTicks(), time.Now()
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-time.After(d):
	}
	busy := float64(hostBusyTicks()-t0) / userHZ
	return 100 * busy / time.Since(start).Seconds() / float64(cpuCount()), nil
}

// densityHeadroomMiB is the host memory the ramp leaves free.
const densityHeadroomMiB = 1024

func memAvailableMiB() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "MemAvailable:"); ok {
			return kB(v) / 1024
		}
	}
	return 0
}
