// Command hyperlet-agent is PID 1 of every hyperlet pod VM. It mounts the
// basic filesystems, reaps orphans, and serves the agent API (api/agent/v1)
// over ttrpc on a virtio-serial port. It trusts the host: the host owns the
// VM. It does not trust anything the processes it starts do.
package main

import (
	"context"
	"flag"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
)

// version is set at build time (-ldflags -X main.version=...).
var version = "dev"

func main() {
	if len(os.Args) == 2 && os.Args[1] == "pause" {
		pause()
		return
	}
	klog.InitFlags(nil)
	flag.Parse()
	pid1 := os.Getpid() == 1
	if pid1 {
		if err := switchRoot(); err != nil {
			fatal(err)
		}
		if err := mountBase(); err != nil {
			fatal(err)
		}
		applyCmdline()
		os.Setenv("PATH", defaultPath)
	}
	klog.InfoS("hyperlet-agent starting", "version", version, "pid1", pid1)
	if b, err := os.ReadFile("/sys/devices/system/clocksource/clocksource0/current_clocksource"); err == nil {
		if cs := strings.TrimSpace(string(b)); strings.Contains(cs, "jiffies") {
			// A jiffies clock needs the periodic tick: this VM will cost
			// host CPU even when idle (see pkg/vm/qemu/tsc.go).
			klog.InfoS("warning: the guest clock is jiffies-based; idle costs host CPU", "clocksource", cs)
		}
	}

	// Before the agent answers, so a template's clones inherit the copy
	// and the warmed-up tables.
	runtimeExe()
	warmUp()
	ctrs := newContainers()
	if pid1 {
		ctrs.startSpareHolder()
	}

	procs := newProcTable()
	sigch := make(chan os.Signal, 16)
	signal.Notify(sigch, unix.SIGCHLD)
	go procs.reap(sigch)

	srv, err := ttrpc.NewServer()
	if err != nil {
		fatal(err)
	}
	agentapi.RegisterAgentService(srv, &service{procs: procs, ctrs: ctrs, shutdown: powerOff})

	ln := newPortListener(agentapi.Port)
	for {
		err := srv.Serve(context.Background(), ln)
		klog.ErrorS(err, "ttrpc server stopped; restarting")
		time.Sleep(100 * time.Millisecond)
	}
}

// applyCmdline reads agent settings from the kernel command line:
// hyperlet.v=N sets the log verbosity, hyperlet.page_reporting_order=N the
// smallest free block (2^N pages) the balloon reports to the host.
func applyCmdline() {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(b)) {
		if v, ok := strings.CutPrefix(f, "hyperlet.v="); ok {
			flag.Set("v", v)
		}
		if v, ok := strings.CutPrefix(f, "hyperlet.page_reporting_order="); ok {
			setReportingOrder(v)
		}
	}
}

// setReportingOrder sets free page reporting's order. The balloon driver
// sets the kernel's default (the pageblock order, 4 MiB here) when it
// registers, overriding the boot parameter of the same name, so it is set
// through sysfs once the driver is up.
func setReportingOrder(v string) {
	const p = "/sys/module/page_reporting/parameters/page_reporting_order"
	if err := os.WriteFile(p, []byte(v), 0); err != nil {
		klog.InfoS("warning: free page reporting order not set", "order", v, "err", err)
	}
}

// powerOff ends the VM: the host runs QEMU with -no-reboot and the guest
// kernel with reboot=t, so a restart makes QEMU exit.
func powerOff() {
	unix.Sync()
	klog.Flush()
	if os.Getpid() != 1 {
		os.Exit(0)
	}
	unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
}

func fatal(err error) {
	klog.ErrorS(err, "hyperlet-agent: fatal")
	klog.Flush()
	if os.Getpid() == 1 {
		powerOff()
	}
	os.Exit(1)
}
