// Command bench-vm measures pod VM cold boot (QEMU start to agent answering)
// and host memory per idle VM, next to a peer measured in the same run: the
// same kernel booting a bare initramfs whose /init reboots at once (the floor
// any agent-based boot sits on). Runs alternate between the two.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hyperlet/hyperlet/pkg/sandbox"
	"github.com/hyperlet/hyperlet/pkg/vm"
	"github.com/hyperlet/hyperlet/pkg/vm/qemu"
)

func main() {
	out := flag.String("output", "_output", "directory holding vmlinux, initrd.img and initrd-test.img")
	n := flag.Int("n", 10, "boots per row")
	idle := flag.Int("idle", 5, "idle VMs measured for memory")
	mem := flag.Int("memory", 256, "guest memory in MiB")
	accelFlag := flag.String("accel", "auto", "auto, kvm or tcg")
	flag.Parse()
	if err := run(*out, *n, *idle, *mem, *accelFlag); err != nil {
		fmt.Fprintln(os.Stderr, "bench-vm:", err)
		os.Exit(1)
	}
}

func run(out string, n, idle, mem int, accelFlag string) error {
	out, _ = filepath.Abs(out)
	dir, err := os.MkdirTemp("/tmp", "hl-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	d := &qemu.Driver{TCGCacheMiB: 64}
	seq := 0
	cfg := func(initrd string) vm.Config {
		seq++
		id := fmt.Sprintf("b%d", seq)
		return vm.Config{
			ID: id, Dir: filepath.Join(dir, id), ConsoleLog: filepath.Join(dir, id+".console"),
			Kernel: filepath.Join(out, "vmlinux"), Initrd: initrd, VCPUs: 1, MemoryMiB: mem,
		}
	}
	agentInitrd := filepath.Join(out, "initrd.img")
	bareInitrd := filepath.Join(out, "initrd-test.img")

	want, err := vm.ParseAccel(accelFlag)
	if err != nil {
		return err
	}
	// Bounds the whole run: a guest that never answers must not hang it.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	probe, err := d.ResolveAccel(ctx, want, cfg(agentInitrd), sandbox.AgentReady, "")
	if err != nil {
		return err
	}

	var bare, ready []time.Duration
	for i := 0; i < n; i++ {
		c := cfg(bareInitrd)
		c.Accel = probe.Accel
		// The kernel hands what follows "--" to init as arguments.
		c.KernelArgs = []string{"rdinit=/bin/busybox", "--", "reboot", "-f"}
		t, err := bootBare(ctx, d, c)
		if err != nil {
			return fmt.Errorf("bare boot: %w", err)
		}
		bare = append(bare, t)

		c = cfg(agentInitrd)
		c.Accel = probe.Accel
		start := time.Now()
		v, cl, err := sandbox.BootVM(ctx, d, c)
		if err != nil {
			return fmt.Errorf("agent boot: %w", err)
		}
		ready = append(ready, time.Since(start))
		cl.Close()
		v.Kill()
	}

	var vms []vm.VM
	defer func() {
		for _, v := range vms {
			v.Kill()
		}
	}()
	for i := 0; i < idle; i++ {
		c := cfg(agentInitrd)
		c.Accel = probe.Accel
		v, cl, err := sandbox.BootVM(ctx, d, c)
		if err != nil {
			return fmt.Errorf("idle boot: %w", err)
		}
		cl.Close()
		vms = append(vms, v)
	}
	time.Sleep(3 * time.Second) // let the guests settle
	var pss []float64
	for _, v := range vms {
		kb, err := pssKiB(v.PID())
		if err != nil {
			return err
		}
		pss = append(pss, float64(kb)/1024)
	}

	qv, _ := exec.Command(qemu.DefaultBinary, "--version").Output()
	fmt.Printf("hyperlet bench-vm — accelerator: %s (%s)\n", probe.Accel, probe.Reason)
	fmt.Printf("host: %d CPUs; %s; guest: 1 vCPU, %d MiB\n\n", runtime.NumCPU(), firstLine(string(qv)), mem)
	fmt.Printf("%-44s %4s %9s %9s %9s %7s\n", "measure", "n", "min", "median", "max", "ratio")
	row := func(name string, xs []time.Duration, peer []time.Duration) {
		slices.Sort(xs)
		ratio := "1.00"
		if peer != nil {
			ratio = fmt.Sprintf("%.2f", float64(median(xs))/float64(median(peer)))
		}
		fmt.Printf("%-44s %4d %9s %9s %9s %7s\n", name, len(xs), ms(xs[0]), ms(median(xs)), ms(xs[len(xs)-1]), ratio)
	}
	row("peer: bare kernel boot to /init exit", bare, nil)
	row("cold boot to agent-ready", ready, bare)
	slices.Sort(pss)
	fmt.Printf("%-44s %4d %8.1fM %8.1fM %8.1fM %7s\n", "host PSS per idle VM (QEMU process)", len(pss), pss[0], pss[len(pss)/2], pss[len(pss)-1],
		fmt.Sprintf("%.2f", pss[len(pss)/2]/float64(mem)))
	fmt.Println("\nratio: median over the peer's median (boot), or PSS over guest RAM (memory).")
	return nil
}

// bootBare times a VM from QEMU start to QEMU exit.
func bootBare(ctx context.Context, d *qemu.Driver, c vm.Config) (time.Duration, error) {
	start := time.Now()
	v, err := d.Start(ctx, c)
	if err != nil {
		return 0, err
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := v.Wait(wctx); err != nil {
		v.Kill()
		return 0, err
	}
	return time.Since(start), nil
}

func pssKiB(pid int) (int, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "Pss:"); ok {
			return strconv.Atoi(strings.Fields(rest)[0])
		}
	}
	return 0, fmt.Errorf("no Pss in smaps_rollup of %d", pid)
}

func median(xs []time.Duration) time.Duration { return xs[len(xs)/2] }

func ms(d time.Duration) string { return fmt.Sprintf("%.0fms", float64(d)/float64(time.Millisecond)) }

func firstLine(s string) string { l, _, _ := strings.Cut(s, "\n"); return l }
