package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"k8s.io/klog/v2"

	"github.com/hyperlet/hyperlet/pkg/agent"
	"github.com/hyperlet/hyperlet/pkg/sandbox"
)

// vmRun boots a throwaway pod VM, runs argv in it with this process's stdio,
// shuts the VM down and returns the command's exit code.
func vmRun(o options, memoryMiB int, argv []string) (int, error) {
	if len(argv) == 0 {
		return 0, errors.New("usage: hyperlet vm-run [flags] -- CMD [ARG...]")
	}
	e, err := setup(o)
	if err != nil {
		return 0, err
	}
	ctx := context.Background()
	accel, err := e.resolveAccel(ctx)
	if err != nil {
		return 0, err
	}
	var rnd [4]byte
	rand.Read(rnd[:])
	cfg := e.vmConfig("run-" + hex.EncodeToString(rnd[:]))
	cfg.Accel = accel
	if memoryMiB > 0 {
		cfg.MemoryMiB = memoryMiB
	}
	defer os.Remove(cfg.ConsoleLog)

	start := time.Now()
	bctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	v, c, err := sandbox.BootVM(bctx, e.driver, cfg)
	cancel()
	if err != nil {
		b, _ := os.ReadFile(cfg.ConsoleLog)
		return 0, fmt.Errorf("%w\nconsole:\n%s", err, b)
	}
	defer v.Kill()
	defer c.Close()
	ver, _ := c.Version(ctx)
	klog.InfoS("VM ready", "vm", cfg.ID, "accel", accel, "boot", time.Since(start).Round(time.Millisecond),
		"kernel", ver.GetKernelRelease(), "agent", ver.GetAgentVersion())

	var stdin io.Reader // an interface, so that "no stdin" is a real nil
	if st, err := os.Stdin.Stat(); err == nil && st.Mode()&os.ModeCharDevice == 0 {
		stdin = os.Stdin // piped input; a terminal is not forwarded
	}
	spec := &agent.ProcessSpec{Id: "run", Args: argv, Env: []string{"HOME=/root", "TERM=dumb"}}
	st, err := c.Run(ctx, spec, stdin, os.Stdout, os.Stderr)
	if err != nil {
		return 0, err
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.Shutdown(sctx); err == nil {
		v.Wait(sctx)
	}
	return int(st.ExitCode), nil
}
