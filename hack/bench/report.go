package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// vmStatus is hyperlet's verbose Status info.
type vmStatus struct {
	TemplateBytes int64 `json:"templateBytes"`
	Pool          struct {
		Size, Ready, Hits, Misses int
	} `json:"pool"`
}

func readVMStatus(ctx context.Context, e *endpoint) vmStatus {
	var st vmStatus
	if r, err := e.rs.Status(ctx, &runtimeapi.StatusRequest{Verbose: true}); err == nil {
		json.Unmarshal([]byte(r.Info["vms"]), &st)
	}
	return st
}

type report struct {
	env             env
	series          []*series
	vmCold, vmClone []time.Duration
	mem             map[string]map[int]memSample
	rates           map[string]float64
	rateCPU         map[string]cpuUse // per pod, over the creation rate phase
	bulkTeardown    map[string]time.Duration
	daemons         map[string]float64
	ctrd, tpl, cold string
	gvisor          string                     // the second peer's name, "" without it
	oneOff          map[string][]time.Duration // hyperctl run --rm, by series label
	rateN, clients  int
	poolInfo        string
	poolSize        int
	templateMiB     float64
	bursts          map[string]burst
	burstN          int
	burstClients    int
}

// burst is the burst phase's outcome for one runtime.
type burst struct {
	rate, maxLoad float64
	cpu           cpuUse // per pod
}

func ratio(a, b float64) string {
	if b == 0 {
		return "-"
	}
	r := a / b
	if r >= 10 {
		return fmt.Sprintf("%.0fx", r)
	}
	return fmt.Sprintf("%.2fx", r)
}

func (r *report) markdown() string {
	var b strings.Builder
	e := r.env
	if r.gvisor != "" {
		fmt.Fprintf(&b, "# hyperlet vs containerd+runc and containerd+gVisor\n\n")
	} else {
		fmt.Fprintf(&b, "# hyperlet vs containerd+runc\n\n")
	}
	fmt.Fprintf(&b, "Measured %s on %s, **accelerator: %s**. Host kernel %s, %s CPUs, %s RAM. %s; %s; %s.\n\n",
		e.when, e.host, strings.ToUpper(e.accel), e.kernel, e.cpus, e.mem, e.qemu, e.containerd, e.runc)
	vc, vt := summarize(r.vmCold), summarize(r.vmClone)
	fmt.Fprintf(&b, "## VM start: template clone vs cold boot\n\nA pod VM (256 MiB, 1 vCPU, pod devices) from QEMU's start until its agent answers; "+
		"a clone also has its CRNG reseeded. %d of each, alternating. Milliseconds.\n\n", vc.n)
	fmt.Fprintf(&b, "| VM start | min | median | p95 |\n|---|---:|---:|---:|\n")
	fmt.Fprintf(&b, "| cold boot | %.0f | %.0f | %.0f |\n| template clone | %.0f | %.0f | %.0f |\n", vc.min, vc.median, vc.p95, vt.min, vt.median, vt.p95)
	fmt.Fprintf(&b, "\nClone/boot: **%s faster** (medians).\n\n", ratio(vc.median, vt.median))
	peer := r.series[0]
	n := len(peer.starts)
	fmt.Fprintf(&b, "## Pod start latency\n\nRunPodSandbox + CreateContainer + StartContainer (returns once the process runs), %d sequential starts per row, "+
		"interleaved round-robin with containerd+runc; each pod is torn down before the next row's start. Milliseconds.\n\n", n)
	fmt.Fprintf(&b, "| runtime | min | median | p95 | medians: RunPodSandbox / CreateContainer / StartContainer | /containerd+runc (median) |\n|---|---:|---:|---:|---:|---:|\n")
	ps := summarize(peer.starts)
	for _, s := range r.series {
		st, sb, sc, ss := summarize(s.starts), summarize(s.sandbox), summarize(s.create), summarize(s.start)
		rat := "1 (peer)"
		if s != peer {
			rat = ratio(st.median, ps.median)
		}
		fmt.Fprintf(&b, "| %s | %.0f | %.0f | %.0f | %.0f / %.0f / %.0f | %s |\n", s.label, st.min, st.median, st.p95, sb.median, sc.median, ss.median, rat)
	}
	if g := r.seriesOf(r.gvisor); g != nil {
		gs, pool := summarize(g.starts), summarize(r.series[3].starts)
		fmt.Fprintf(&b, "\nhyperlet warm pool / %s (medians): **%s**; template clone / %s: %s.\n", r.gvisor, ratio(pool.median, gs.median),
			r.gvisor, ratio(summarize(r.series[2].starts).median, gs.median))
	}
	pool := r.series[3]
	for _, big := range r.series[4:] {
		if big.e.tcgCacheMiB <= pool.e.tcgCacheMiB {
			continue // a peer, or no TCG
		}
		fmt.Fprintf(&b, "\n%s is the warm pool with `vm.tcg_cache_mib` raised from %d (the default) to %d: whole pod start %s, CreateContainer %s, "+
			"StartContainer %s the default's (medians); each of its pod VMs keeps up to %d MiB more host memory (docs/performance.md).\n",
			big.label, pool.e.tcgCacheMiB, big.e.tcgCacheMiB, ratio(summarize(big.starts).median, summarize(pool.starts).median),
			ratio(summarize(big.create).median, summarize(pool.create).median), ratio(summarize(big.start).median, summarize(pool.start).median),
			big.e.tcgCacheMiB-pool.e.tcgCacheMiB)
	}
	cold, tpl := summarize(r.series[1].sandbox), summarize(r.series[2].sandbox)
	coldAll, tplAll := summarize(r.series[1].starts), summarize(r.series[2].starts)
	fmt.Fprintf(&b, "\nTemplate clone vs cold boot (medians): RunPodSandbox %s faster, whole pod start %s faster. Warm pool (size %d): %s.\n\n",
		ratio(cold.median, tpl.median), ratio(coldAll.median, tplAll.median), r.poolSize, r.poolInfo)

	fmt.Fprintf(&b, "## Teardown latency\n\nStopPodSandbox + RemovePodSandbox of one pod with one running container, milliseconds.\n\n")
	fmt.Fprintf(&b, "| runtime | min | median | p95 | /containerd+runc (median) |\n|---|---:|---:|---:|---:|\n")
	pt := summarize(peer.teardown)
	for _, s := range r.series {
		st := summarize(s.teardown)
		rat := "1 (peer)"
		if s != peer {
			rat = ratio(st.median, pt.median)
		}
		fmt.Fprintf(&b, "| %s | %.0f | %.0f | %.0f | %s |\n", s.label, st.min, st.median, st.p95, rat)
	}

	r.cpuSection(&b)

	if len(r.oneOff) > 0 {
		fmt.Fprintf(&b, "\n## A one-off command\n\n`hyperctl run --rm busybox echo hi` as a user runs it (hyperctl speaks plain CRI, so it drives every runtime): "+
			"pod, container, output and teardown, %d runs per row, interleaved. Milliseconds.\n\n", len(r.oneOff[peer.label]))
		fmt.Fprintf(&b, "| runtime | min | median | max | /containerd+runc (median) |\n|---|---:|---:|---:|---:|\n")
		po := summarize(r.oneOff[peer.label])
		for _, s := range r.series {
			o := summarize(r.oneOff[s.label])
			rat := "1 (peer)"
			if s != peer {
				rat = ratio(o.median, po.median)
			}
			fmt.Fprintf(&b, "| %s | %.0f | %.0f | %.0f | %s |\n", s.label, o.min, o.median, o.max, rat)
		}
	}

	fmt.Fprintf(&b, "\n## Creation rate\n\n%d pods (sandbox + one container each) started by %d concurrent clients.\n\n", r.rateN, r.clients)
	fmt.Fprintf(&b, "| runtime | pods/s | teardown of all, s | /containerd+runc (pods/s) |\n|---|---:|---:|---:|\n")
	fmt.Fprintf(&b, "| %s | %.2f | %.1f | 1 (peer) |\n", r.ctrd, r.rates[r.ctrd], r.bulkTeardown[r.ctrd].Seconds())
	if g := r.gvisor; g != "" {
		fmt.Fprintf(&b, "| %s | %.2f | %.1f | %s |\n", g, r.rates[g], r.bulkTeardown[g].Seconds(), ratio(r.rates[g], r.rates[r.ctrd]))
	}
	fmt.Fprintf(&b, "| %s | %.2f | %.1f | %s |\n", r.tpl, r.rates[r.tpl], r.bulkTeardown[r.tpl].Seconds(), ratio(r.rates[r.tpl], r.rates[r.ctrd]))

	if r.burstN > 0 {
		fmt.Fprintf(&b, "\n## Burst\n\n%d pods started by %d concurrent clients on an otherwise idle node; every one must start. "+
			"Load average: the highest 1-minute figure sampled each second during the burst.\n\n", r.burstN, r.burstClients)
		fmt.Fprintf(&b, "| runtime | pods/s | max load average | hyperlet/containerd (pods/s) |\n|---|---:|---:|---:|\n")
		c, t := r.bursts[r.ctrd], r.bursts[r.tpl]
		fmt.Fprintf(&b, "| %s | %.2f | %.1f | 1 (peer) |\n", r.ctrd, c.rate, c.maxLoad)
		fmt.Fprintf(&b, "| %s | %.2f | %.1f | %s |\n", r.tpl, t.rate, t.maxLoad, ratio(t.rate, c.rate))
	}

	fmt.Fprintf(&b, "\n## Memory per idle pod\n\nHost PSS (shared pages divided among the processes mapping them) of all of a pod's processes, "+
		"averaged over the pods, 10 s after the last start. containerd+runc: the pod's shim, pause and container processes; containerd+gVisor: the pod's shim and everything beneath it (gofer, sandbox, systrap stubs); hyperlet: the pod's QEMU. MiB.\n\n")
	gh, gsep := "", ""
	if r.gvisor != "" {
		gh, gsep = " "+r.gvisor+" | template/gVisor |", "---:|---:|"
	}
	fmt.Fprintf(&b, "| idle pods | %s | %s | of which TCG translation cache | %s | template/containerd |%s\n|---:|---:|---:|---:|---:|---:|%s\n", r.ctrd, r.tpl, r.cold, gh, gsep)
	for _, k := range []int{1, 10, r.rateN} {
		c, t, cb := r.mem[r.ctrd][k], r.mem[r.tpl][k], r.mem[r.cold][k]
		cbs := "-"
		if cb.pss > 0 {
			cbs = fmt.Sprintf("%.1f", cb.pss)
		}
		gcol := ""
		if r.gvisor != "" {
			g := r.mem[r.gvisor][k]
			gcol = fmt.Sprintf(" %.1f | %s |", g.pss, ratio(t.pss, g.pss))
		}
		fmt.Fprintf(&b, "| %d | %.1f | %.1f | %.1f | %s | %s |%s\n", k, c.pss, t.pss, t.tcg, cbs, ratio(t.pss, c.pss), gcol)
	}
	fmt.Fprintf(&b, "\nThe translation cache (`vm.tcg_cache_mib`) exists only under TCG; with KVM a pod VM has none.\n")
	fmt.Fprintf(&b, "\n## Host CPU per idle pod\n\nutime + stime of all of a pod's processes over 10 s, right after the memory sample, in %% of one host CPU per pod.\n\n")
	gh, gsep = "", ""
	if r.gvisor != "" {
		gh, gsep = " "+r.gvisor+" |", "---:|"
	}
	fmt.Fprintf(&b, "| idle pods | %s | %s | %s |%s\n|---:|---:|---:|---:|%s\n", r.ctrd, r.tpl, r.cold, gh, gsep)
	for _, k := range []int{1, 10, r.rateN} {
		c, t, cb := r.mem[r.ctrd][k], r.mem[r.tpl][k], r.mem[r.cold][k]
		cbs := "-"
		if cb.pss > 0 {
			cbs = fmt.Sprintf("%.2f", cb.cpu)
		}
		gcol := ""
		if r.gvisor != "" {
			gcol = fmt.Sprintf(" %.2f |", r.mem[r.gvisor][k].cpu)
		}
		fmt.Fprintf(&b, "| %d | %.2f | %.2f | %s |%s\n", k, c.cpu, t.cpu, cbs, gcol)
	}
	fmt.Fprintf(&b, "\nNot in the per-pod figures: the runtime daemons (%s %.1f MiB, %s %.1f MiB PSS) and the template RAM files hyperlet keeps on tmpfs "+
		"(%.1f MiB resident, once per node and VM size; the pages clones map are in their PSS).\n",
		r.ctrd, r.daemons[r.ctrd], r.tpl, r.daemons[r.tpl], r.templateMiB)
	fmt.Fprintf(&b, "\nChart: [latency.svg](latency.svg). Reproduce: `make bench` (see docs/performance.md).\n")
	return b.String()
}

// cpuSection is what a KVM host would see: the machine's CPU time per pod
// in each phase, and the part hyperlet's vCPU threads ran. Under TCG those
// threads emulate the guest; a KVM guest runs the same work natively, so
// the time outside the guest is what stays.
func (r *report) cpuSection(b *strings.Builder) {
	fmt.Fprintf(b, "\n## CPU per pod\n\nCPU time of the whole machine (all CPUs, /proc/stat, idle excluded) while each phase ran, per pod, and the part "+
		"spent in hyperlet's vCPU threads (QEMU's `CPU n/TCG`, from their /proc stat): under TCG that is the guest's emulated run time, "+
		"which a KVM host runs natively at a fraction of it. *Outside the guest* is the rest: daemons, QEMU's main loop and I/O, CNI, "+
		"the host kernel, what a KVM host pays too. A warm-pool start includes the part of the replacement warm VM's start that ran before it returned; "+
		"the rest lands in its teardown or the next row's start. "+
		"Teardown counts no vCPU time (the VM is gone when it is sampled). Milliseconds of CPU.\n\n")
	fmt.Fprintf(b, "| runtime | phase | CPU | of it vCPU threads | vCPU share | outside the guest |\n|---|---|---:|---:|---:|---:|\n")
	for _, s := range r.series {
		n := len(s.starts)
		fmt.Fprintf(b, "| %s | pod start (sequential) | %s |\n", s.label, s.cpuStart.per(n).cells())
		fmt.Fprintf(b, "| %s | teardown (sequential) | %.0f | | | |\n", s.label, ms(s.cpuTeardown.per(n).host))
	}
	for _, name := range []string{r.ctrd, r.gvisor, r.tpl} {
		if u, ok := r.rateCPU[name]; ok {
			fmt.Fprintf(b, "| %s | creation rate, %d pods by %d clients | %s |\n", name, r.rateN, r.clients, u.cells())
		}
	}
	for _, name := range []string{r.ctrd, r.tpl} {
		if bu, ok := r.bursts[name]; ok {
			fmt.Fprintf(b, "| %s | burst, %d pods by %d clients | %s |\n", name, r.burstN, r.burstClients, bu.cpu.cells())
		}
	}
}

// seriesOf is the latency series of the named runtime, nil if none.
func (r *report) seriesOf(name string) *series {
	for _, s := range r.series {
		if name != "" && s.label == name {
			return s
		}
	}
	return nil
}

// svg draws each series' pod start latencies as dots on a log-scale axis,
// with the median marked.
func (r *report) svg() string {
	const (
		w, left, right, rowH, top = 860, 190, 30, 46, 40
	)
	lo, hi := math.Inf(1), 0.0
	for _, s := range r.series {
		st := summarize(s.starts)
		lo, hi = math.Min(lo, st.min), math.Max(hi, st.max)
	}
	lo = math.Pow(10, math.Floor(math.Log10(lo)))
	hi = math.Pow(10, math.Ceil(math.Log10(hi)))
	h := top + rowH*len(r.series) + 40
	x := func(ms float64) float64 {
		return left + (math.Log10(ms)-math.Log10(lo))/(math.Log10(hi)-math.Log10(lo))*float64(w-left-right)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", w, h)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="20" font-size="14">Pod start latency (RunPodSandbox+CreateContainer+StartContainer), %s, ms, log scale</text>`+"\n", left-170, strings.ToUpper(r.env.accel))
	for d := lo; d <= hi; d *= 10 {
		for _, m := range []float64{1, 2, 5} {
			v := d * m
			if v > hi {
				break
			}
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>`+"\n", x(v), top-8, x(v), h-40)
			fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle" fill="#555">%g</text>`+"\n", x(v), h-24, v)
		}
	}
	colors := []string{"#555555", "#c0392b", "#2980b9", "#27ae60"}
	for i, s := range r.series {
		y := top + rowH*i + rowH/2
		st := summarize(s.starts)
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end" dominant-baseline="middle">%s</text>`+"\n", left-10, y, s.label)
		for j, v := range st.all {
			jitter := float64(j%5-2) * 3
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s" fill-opacity="0.6"/>`+"\n", x(v), float64(y)+jitter, colors[i%len(colors)])
		}
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="black" stroke-width="2"/>`+"\n", x(st.median), y-14, x(st.median), y+14)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle" font-size="10">%.0f</text>`+"\n", x(st.median), y-17, st.median)
	}
	b.WriteString("</svg>\n")
	return b.String()
}
