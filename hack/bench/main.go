// Command bench measures hyperlet against containerd+runc in one run: the
// same CRI workload through both runtimes' sockets, interleaved, on the same
// CNI network and images from the same local registry. It prints a table of
// hyperlet/containerd ratios and writes it, with a chart of the pod start
// latency distribution, to docs/bench/.
//
//	go run ./hack/bench [-n 20] [-out docs/bench]   (make bench)
//	go run ./hack/bench -density 200                (make bench-density)
//
// It needs root, the built hyperlet (make build guest), Debian's containerd
// and runc, and the registry of hack/registry.sh.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hyperlet/hyperlet/pkg/config"
	"github.com/hyperlet/hyperlet/pkg/vm"
)

type benchConfig struct {
	kernel, initrd, accel string
	kernelArgs            []string
}

func main() {
	var (
		n        = flag.Int("n", 20, "sequential pod starts per runtime and mode")
		rateN    = flag.Int("rate-pods", 50, "pods started for the creation rate (and the largest memory sample)")
		clients  = flag.Int("clients", 10, "concurrent clients for the creation rate")
		burstN   = flag.Int("burst-pods", 100, "pods of the burst phase (0: skip it)")
		burstC   = flag.Int("burst-clients", 20, "concurrent clients of the burst phase")
		poolSize = flag.Int("pool", 2, "warm pool size of the pool mode")
		density  = flag.Int("density", 0, "instead: ramp hyperlet up to this many idle pods, check them, tear down")
		out      = flag.String("out", "docs/bench", "where results.md and latency.svg go (empty: nowhere)")
		work     = flag.String("work", "/tmp/hyperlet-bench", "state of the daemons under test (short: socket paths)")
		registry = flag.String("registry", "127.0.0.1:5050", "the local registry (hack/registry.sh)")
		bin      = flag.String("hyperlet", "_output/hyperlet", "hyperlet binary")
		accel    = flag.String("accel", "auto", "hyperlet's accelerator")
		hyperctl = flag.String("hyperctl", "_output/hyperctl", "hyperctl binary, timed running `run --rm IMAGE echo hi` against every runtime")
		gvisor   = flag.String("gvisor", "", "directory of gVisor's runsc and shim (hack/gvisor.sh): adds containerd+gVisor as a second peer")
		kargs    = flag.String("kernel-args", "", "space-separated guest kernel arguments added to every hyperlet daemon's vm.kernel_args (A/B runs)")
	)
	flag.Parse()
	cfg := benchConfig{kernel: abs("_output/vmlinux"), initrd: abs("_output/initrd.img"), accel: *accel, kernelArgs: strings.Fields(*kargs)}
	b := &bench{cfg: cfg, work: *work, registry: *registry, bin: abs(*bin), n: *n, rateN: *rateN, clients: *clients, pool: *poolSize,
		burstN: *burstN, burstClients: *burstC, gvisor: *gvisor, hyperctl: abs(*hyperctl)}
	// Interrupted, it still tears down what it started.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Hour)
	defer cancel()
	err := b.setup()
	if err == nil {
		if *density > 0 {
			err = b.density(ctx, *density, *out)
		} else {
			err = b.run(ctx, *out)
		}
		b.teardown()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func abs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	return a
}

type bench struct {
	cfg                     benchConfig
	work, registry, bin     string
	n, rateN, clients, pool int
	burstN, burstClients    int
	cniDir, logs            string
	gvisor, hyperctl        string
	endpoints               []*endpoint
}

func (b *bench) setup() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (VMs, network namespaces, containerd)")
	}
	os.RemoveAll(b.work)
	b.cniDir = filepath.Join(b.work, "cni")
	b.logs = filepath.Join(b.work, "logs")
	if err := writeCNIConfig(b.cniDir); err != nil {
		return err
	}
	return nil
}

// teardown removes every pod through CRI (so a failed run leaks no VM,
// namespace or mount), then stops the daemons.
func (b *bench) teardown() {
	for _, e := range b.endpoints {
		if e.rs == nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		if list, err := e.rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err == nil && len(list.Items) > 0 {
			fmt.Printf("removing %d pods of %s\n", len(list.Items), e.name)
			var pods []*pod
			for _, p := range list.Items {
				pods = append(pods, &pod{id: p.Id})
			}
			if _, err := stopMany(ctx, e, pods, 4); err != nil {
				fmt.Fprintln(os.Stderr, "teardown:", err)
			}
		}
		cancel()
	}
	for _, e := range b.endpoints {
		e.stop()
	}
	exec.Command("ip", "link", "del", "hlbench0").Run()
}

// pull makes sure the workload image is present, untimed.
func (b *bench) pull(ctx context.Context, e *endpoint) error {
	_, err := e.is.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: busyboxImage}})
	if err != nil {
		return fmt.Errorf("%s: pull %s: %w", e.name, busyboxImage, err)
	}
	return nil
}

// series is one row group of the latency measurement.
type series struct {
	label    string
	e        *endpoint
	starts   []time.Duration
	sandbox  []time.Duration // RunPodSandbox alone
	create   []time.Duration // CreateContainer alone
	start    []time.Duration // StartContainer alone
	teardown []time.Duration
	// CPU the machine spent, summed over the starts and the teardowns.
	cpuStart, cpuTeardown cpuUse
}

// startModes starts a hyperlet daemon per mode, pulls the workload's
// images into them and into also, and waits until their templates and
// pools are ready.
func (b *bench) startModes(ctx context.Context, hl map[string]*endpoint, modes []hyperletMode, also ...*endpoint) error {
	pull := append([]*endpoint{}, also...)
	for _, m := range modes {
		e, err := startHyperlet(ctx, b.bin, b.work, b.cniDir, b.registry, m, b.cfg)
		if err != nil {
			return err
		}
		b.endpoints = append(b.endpoints, e)
		hl[m.name] = e
		pull = append(pull, e)
	}
	for _, e := range pull {
		if err := b.pull(ctx, e); err != nil {
			return err
		}
	}
	for _, m := range modes {
		if err := hl[m.name].waitWarm(ctx, m); err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) run(ctx context.Context, out string) error {
	ctrd, gv, err := startContainerd(ctx, b.work, b.cniDir, b.registry, b.gvisor)
	if err != nil {
		return err
	}
	b.endpoints = append(b.endpoints, ctrd)
	peers := []*endpoint{ctrd}
	if gv != nil {
		b.endpoints = append(b.endpoints, gv)
		peers = append(peers, gv)
	}
	hl := map[string]*endpoint{}
	if err := b.startModes(ctx, hl, []hyperletMode{{name: "cold", templates: false}, {name: "template", templates: true}, {name: "pool", templates: true, pool: b.pool}}, b.endpoints...); err != nil {
		return err
	}
	env := describeEnv(ctx, hl["cold"])
	if env.accel == string(vm.AccelTCG) {
		// The translation cache's trade (docs/performance.md): the pool
		// again with twice the default cache, in the same run. Only
		// under TCG: a KVM host has no such cache.
		if err := b.startModes(ctx, hl, []hyperletMode{{name: "pool-tcg", templates: true, pool: b.pool, tcgCacheMiB: 2 * config.Default().VM.TCGCacheMiB}}); err != nil {
			return err
		}
	}
	fmt.Print(env.header())

	fmt.Printf("VM start to agent-ready: %d cold boots and %d template clones, alternating\n", b.n, b.n)
	vmCold, vmClone, err := b.vmStarts(ctx, config.Default().VM.TCGCacheMiB, vm.Accel(env.accel))
	if err != nil {
		return err
	}

	// Pod start and teardown latency: sequential, interleaved round-robin
	// so slow drifts of the machine hit every runtime alike.
	all := []*series{{label: "containerd+runc", e: ctrd}, {label: "hyperlet cold boot", e: hl["cold"]},
		{label: "hyperlet template clone", e: hl["template"]}, {label: "hyperlet warm pool", e: hl["pool"]}}
	if e := hl["pool-tcg"]; e != nil {
		all = append(all, &series{label: fmt.Sprintf("hyperlet warm pool, %d MiB TCG cache", e.tcgCacheMiB), e: e})
	}
	if gv != nil {
		all = append(all, &series{label: gv.name, e: gv})
	}
	fmt.Printf("pod start latency: %d sequential starts per runtime, interleaved\n", b.n)
	for i := range b.n {
		for _, s := range all {
			c0 := sampleCPU()
			p, err := startPod(ctx, s.e, b.logs)
			if err != nil {
				return err
			}
			c1 := sampleCPU()
			d, err := stopPod(ctx, s.e, p)
			if err != nil {
				return err
			}
			s.cpuStart = s.cpuStart.add(c1.since(c0))
			s.cpuTeardown = s.cpuTeardown.add(sampleCPU().since(c1))
			s.starts = append(s.starts, p.total())
			s.sandbox = append(s.sandbox, p.run)
			s.create = append(s.create, p.create)
			s.start = append(s.start, p.start)
			s.teardown = append(s.teardown, d)
		}
		fmt.Printf("  round %d/%d done\n", i+1, b.n)
	}
	// A user's one-off command: hyperctl run --rm, a few times each,
	// interleaved like the starts above.
	fmt.Printf("hyperctl run --rm: %d runs per runtime, interleaved\n", hyperctlRuns)
	oneOff := map[string][]time.Duration{}
	for range hyperctlRuns {
		for _, s := range all {
			d, err := hyperctlRun(ctx, b.hyperctl, s.e)
			if err != nil {
				return err
			}
			oneOff[s.label] = append(oneOff[s.label], d)
		}
	}
	ps := readVMStatus(ctx, hl["pool"]).Pool
	poolInfo := fmt.Sprintf("%d hits, %d misses", ps.Hits, ps.Misses)

	// Creation rate and memory: containerd and hyperlet with templates
	// (the default configuration, without the pool's idle VMs).
	mem := map[string]map[int]memSample{}
	rates := map[string]float64{}
	rateCPU := map[string]cpuUse{}
	bulkTeardown := map[string]time.Duration{}
	for _, e := range append(peers, hl["template"], hl["cold"]) {
		mem[e.name] = map[int]memSample{}
		var pods []*pod
		for _, target := range []int{1, 10} {
			more, _, err := startMany(ctx, e, b.logs, target-len(pods), 1)
			pods = append(pods, more...)
			if err != nil {
				return err
			}
			if mem[e.name][target], err = settledPSS(ctx, e, pods); err != nil {
				return err
			}
			fmt.Printf("  %s: %d idle pods, %.1f MiB PSS each\n", e.name, target, mem[e.name][target].pss)
		}
		if _, err := stopMany(ctx, e, pods, b.clients); err != nil {
			return err
		}
		if e == hl["cold"] {
			continue // 50 cold boots add minutes and no new figure
		}
		c0 := sampleCPU()
		pods, took, err := startMany(ctx, e, b.logs, b.rateN, b.clients)
		if err != nil {
			return err
		}
		rateCPU[e.name] = sampleCPU().since(c0).per(len(pods))
		rates[e.name] = float64(len(pods)) / took.Seconds()
		fmt.Printf("  %s: %d pods with %d clients in %s (%.2f pods/s)\n", e.name, len(pods), b.clients, took.Round(time.Millisecond), rates[e.name])
		if mem[e.name][b.rateN], err = settledPSS(ctx, e, pods); err != nil {
			return err
		}
		fmt.Printf("  %s: %d idle pods, %.1f MiB PSS each\n", e.name, b.rateN, mem[e.name][b.rateN].pss)
		if bulkTeardown[e.name], err = stopMany(ctx, e, pods, b.clients); err != nil {
			return err
		}
	}
	// A burst: many pods from many clients at once, on an otherwise idle
	// node. Every one must start; the load average shows whether the
	// node stayed usable.
	bursts := map[string]burst{}
	if b.burstN > 0 {
		for _, e := range []*endpoint{ctrd, hl["template"]} {
			load, c0 := sampleLoad(), sampleCPU()
			pods, took, err := startMany(ctx, e, b.logs, b.burstN, b.burstClients)
			maxLoad, used := load(), sampleCPU().since(c0)
			if err != nil {
				stopMany(ctx, e, pods, b.burstClients)
				return fmt.Errorf("%s: burst of %d pods: %w", e.name, b.burstN, err)
			}
			bursts[e.name] = burst{rate: float64(len(pods)) / took.Seconds(), maxLoad: maxLoad, cpu: used.per(len(pods))}
			fmt.Printf("  %s: burst of %d pods with %d clients in %s (%.2f pods/s, load average up to %.1f)\n",
				e.name, len(pods), b.burstClients, took.Round(time.Millisecond), bursts[e.name].rate, maxLoad)
			if _, err := stopMany(ctx, e, pods, b.burstClients); err != nil {
				return err
			}
		}
	}
	daemons := map[string]float64{}
	for _, e := range []*endpoint{ctrd, hl["template"]} {
		kib, _ := pssKiB([]int{e.cmd.Process.Pid})
		daemons[e.name] = float64(kib) / 1024
	}
	tplBytes := readVMStatus(ctx, hl["template"]).TemplateBytes

	r := &report{env: env, series: all, vmCold: vmCold, vmClone: vmClone, mem: mem, rates: rates, rateCPU: rateCPU, bulkTeardown: bulkTeardown, daemons: daemons,
		ctrd: ctrd.name, tpl: hl["template"].name, cold: hl["cold"].name, rateN: b.rateN, clients: b.clients,
		gvisor: gvName(gv), oneOff: oneOff,
		poolInfo: poolInfo, poolSize: b.pool, templateMiB: float64(tplBytes) / (1 << 20),
		bursts: bursts, burstN: b.burstN, burstClients: b.burstClients}
	table := r.markdown()
	fmt.Println()
	fmt.Print(table)
	if out != "" {
		if err := os.MkdirAll(out, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(out, "results.md"), []byte(table), 0o644); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(out, "latency.svg"), []byte(r.svg()), 0o644); err != nil {
			return err
		}
		fmt.Printf("\nwrote %s and %s\n", filepath.Join(out, "results.md"), filepath.Join(out, "latency.svg"))
	}
	return nil
}

// hyperctlRuns is how many times each runtime runs hyperctl's one-off command.
const hyperctlRuns = 5

func gvName(e *endpoint) string {
	if e == nil {
		return ""
	}
	return e.name
}

// settledPSS waits for idle pods to settle, then samples their PSS.
func settledPSS(ctx context.Context, e *endpoint, pods []*pod) (memSample, error) {
	select {
	case <-ctx.Done():
		return memSample{}, ctx.Err()
	case <-time.After(10 * time.Second):
	}
	pss, tcg, err := podPSS(ctx, e, pods)
	if err != nil {
		return memSample{}, err
	}
	cpu, err := podIdleCPU(ctx, e, pods, 10*time.Second)
	return memSample{pss, tcg, cpu}, err
}

// memSample is the mean PSS per pod and the part that is TCG's translation
// cache, in MiB, and the mean host CPU an idle pod uses, in % of one CPU.
type memSample struct{ pss, tcg, cpu float64 }

// env describes the machine and the runtimes for the table's header.
type env struct {
	when, host, accel, kernel, cpus, mem, qemu, containerd, runc string
}

func describeEnv(ctx context.Context, hl *endpoint) env {
	e := env{when: time.Now().UTC().Format("2006-01-02 15:04 MST")}
	e.host, _ = os.Hostname()
	if st, err := hl.rs.Status(ctx, &runtimeapi.StatusRequest{}); err == nil {
		for _, c := range st.Status.Conditions {
			if c.Type == runtimeapi.RuntimeReady {
				e.accel = strings.TrimPrefix(c.Message, "pod VMs run under ")
			}
		}
	}
	e.kernel = firstLine(exec.Command("uname", "-r"))
	e.cpus = firstLine(exec.Command("nproc"))
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		e.mem = strings.Join(strings.Fields(strings.SplitN(string(b), "\n", 2)[0])[1:], " ")
	}
	e.qemu = firstLine(exec.Command("qemu-system-x86_64", "--version"))
	e.containerd = firstLine(exec.Command("containerd", "--version"))
	e.runc = firstLine(exec.Command("runc", "--version"))
	return e
}

func (e env) header() string {
	return fmt.Sprintf("hyperlet benchmark, %s\naccelerator: %s | host kernel %s | %s CPUs | %s RAM\n%s | %s | %s\n\n",
		e.when, strings.ToUpper(e.accel), e.kernel, e.cpus, e.mem, e.qemu, e.containerd, e.runc)
}

func firstLine(c *exec.Cmd) string {
	b, err := c.Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0])
}
