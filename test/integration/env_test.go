// Package integration boots real VMs (QEMU, the guest kernel and the agent
// initrd built by `make`) and drives them through hyperlet's packages.
package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hyperlet/hyperlet/pkg/agent"
	"github.com/hyperlet/hyperlet/pkg/sandbox"
	"github.com/hyperlet/hyperlet/pkg/vm"
	"github.com/hyperlet/hyperlet/pkg/vm/qemu"
)

// criTemplates is the VM template directory of every hyperlet the tests
// start (on tmpfs, like the default): built once, used by later daemons.
var criTemplates = fmt.Sprintf("/dev/shm/hlt-templates-%d", os.Getpid())

func TestMain(m *testing.M) {
	code := m.Run()
	os.RemoveAll(criTemplates)
	os.Exit(code)
}

// The VM tests need a built kernel and test initrd (`make guest`). They do
// not skip quietly: without them every test fails, unless
// HYPERLET_SKIP_VM_TESTS=1 asks for a skip, which is then printed.
func requireVM(t *testing.T) {
	t.Helper()
	if os.Getenv("HYPERLET_SKIP_VM_TESTS") == "1" {
		t.Skip("SKIP: VM tests disabled by HYPERLET_SKIP_VM_TESTS=1")
	}
	for _, f := range []string{kernel(), initrd()} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("VM test needs %s (run `make guest`, or set HYPERLET_KERNEL/HYPERLET_TEST_INITRD): %v", f, err)
		}
	}
}

func outputDir() string {
	d, _ := filepath.Abs("../../_output")
	return d
}

func kernel() string { return envOr("HYPERLET_KERNEL", filepath.Join(outputDir(), "vmlinux")) }
func initrd() string {
	return envOr("HYPERLET_TEST_INITRD", filepath.Join(outputDir(), "initrd-test.img"))
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

var (
	driver    = &qemu.Driver{TCGCacheMiB: 64}
	accelOnce sync.Once
	accel     vm.Accel
	accelErr  error
	vmSeq     atomic.Int64
)

// runDir is a short directory for VM sockets (unix socket paths are short).
func runDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("/tmp", "hlt-")
	if err != nil {
		t.Fatal(err)
	}
	// The jailed QEMU (an unprivileged uid) binds its files from here.
	if err := os.Chmod(d, 0o711); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func baseConfig(dir string) vm.Config {
	id := fmt.Sprintf("t%d", vmSeq.Add(1))
	return vm.Config{
		ID:         id,
		Dir:        filepath.Join(dir, id),
		ConsoleLog: filepath.Join(dir, id+".console"),
		Kernel:     kernel(),
		Initrd:     initrd(),
		VCPUs:      1,
		MemoryMiB:  256,
	}
}

// resolveAccel probes once per test binary (HYPERLET_ACCEL forces one).
func resolveAccel(t *testing.T) vm.Accel {
	t.Helper()
	accelOnce.Do(func() {
		want, err := vm.ParseAccel(os.Getenv("HYPERLET_ACCEL"))
		if err != nil {
			accelErr = err
			return
		}
		dir, err := os.MkdirTemp("/tmp", "hlt-probe-")
		if err != nil {
			accelErr = err
			return
		}
		defer os.RemoveAll(dir)
		p, err := driver.ResolveAccel(context.Background(), want, baseConfig(dir), sandbox.AgentReady, "")
		accel, accelErr = p.Accel, err
		fmt.Fprintf(os.Stderr, "accelerator: %s (%s)\n", p.Accel, p.Reason)
	})
	if accelErr != nil {
		t.Fatal(accelErr)
	}
	return accel
}

// bootTimeout is generous: TCG on a loaded 2-core machine is slow.
const bootTimeout = 2 * time.Minute

type testVM struct {
	vm.VM
	cfg    vm.Config
	client *agent.Client
}

func bootVM(t *testing.T) *testVM {
	t.Helper()
	requireVM(t)
	cfg := baseConfig(runDir(t))
	cfg.Accel = resolveAccel(t)
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	v, c, err := sandbox.BootVM(ctx, driver, cfg)
	if err != nil {
		t.Fatalf("boot: %v\nconsole:\n%s", err, readFile(cfg.ConsoleLog))
	}
	t.Cleanup(func() {
		c.Close()
		v.Kill()
		if t.Failed() {
			t.Logf("console of %s:\n%s", cfg.ID, readFile(cfg.ConsoleLog))
		}
	})
	return &testVM{VM: v, cfg: cfg, client: c}
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}
