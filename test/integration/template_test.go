package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
	"github.com/hyperlet/hyperlet/pkg/agent"
	"github.com/hyperlet/hyperlet/pkg/sandbox"
	"github.com/hyperlet/hyperlet/pkg/template"
	"github.com/hyperlet/hyperlet/pkg/vm"
)

// openTemplates opens a template store on /dev/shm for the test VMs' kernel
// and initrd.
func openTemplates(t *testing.T, dir, extra string) *template.Store {
	t.Helper()
	vmDir := runDir(t)
	s, err := template.Open(context.Background(), driver, template.Options{
		Dir:   dir,
		Files: []string{kernel(), initrd()},
		Extra: extra,
		Ready: sandbox.AgentReady,
		VMDir: func(id string) string { return filepath.Join(vmDir, id) },
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestTemplateClones builds a template with a NIC and a 9p device, starts
// two clones from it and checks each is its own machine: different random
// bytes after the reseed, its own MAC, its own shared directory, the host's
// clock. The template survives a reopen and is dropped when an input changes.
func TestTemplateClones(t *testing.T) {
	requireVM(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("/dev/shm", "hlt-tpl-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	store := openTemplates(t, dir, "a")

	run := runDir(t)
	cfg := baseConfig(run)
	cfg.Accel = resolveAccel(t)
	cfg.Net = &vm.NetDevice{MAC: "02:00:00:00:00:01"}
	cfg.SharedDir = run
	if _, ok := store.Lookup(cfg); ok {
		t.Fatal("template found before any was built")
	}
	tpl, err := store.Ensure(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(tpl.State); err != nil || st.Size() > 1<<20 {
		t.Fatalf("state file %v %v: want a device state well under 1 MiB (RAM stays in the memory file)", st, err)
	}

	var randoms []string
	for i, mac := range []string{"02:aa:00:00:00:01", "02:aa:00:00:00:02"} {
		c := baseConfig(run)
		c.Accel = cfg.Accel
		c.Net = &vm.NetDevice{MAC: mac}
		c.SharedDir = filepath.Join(run, "shared"+mac[len(mac)-1:])
		if err := os.MkdirAll(c.SharedDir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(c.SharedDir, "who"), []byte(mac), 0o644); err != nil {
			t.Fatal(err)
		}
		clone, err := store.Clone(c, tpl)
		if err != nil {
			t.Fatal(err)
		}
		v, client, err := sandbox.BootVM(ctx, driver, clone)
		if err != nil {
			t.Fatalf("clone %d: %v\nconsole:\n%s", i, err, readFile(c.ConsoleLog))
		}
		t.Cleanup(func() { client.Close(); v.Kill() })
		seed := make([]byte, 64)
		rand.Read(seed)
		if err := client.AddEntropy(ctx, seed); err != nil {
			t.Fatal(err)
		}
		if err := client.SetupPod(ctx, &agent.PodSetup{
			Hostname:   "clone" + mac[len(mac)-1:],
			SharedFs:   true,
			Interfaces: []*agentapi.Interface{{Mac: mac, CurrentMac: tpl.MAC, Addresses: []string{"10.99.0.2/24"}}},
		}); err != nil {
			t.Fatalf("clone %d: setup: %v", i, err)
		}
		out := runIn(t, ctx, client, "sh", "-c",
			"head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; cat /sys/class/net/eth0/address; cat "+agentapi.SharedDir+"/who; echo; hostname; date +%s")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 5 {
			t.Fatalf("clone %d output: %q", i, out)
		}
		randoms = append(randoms, lines[0])
		if lines[1] != mac || lines[2] != mac || lines[3] != "clone"+mac[len(mac)-1:] {
			t.Fatalf("clone %d: MAC %q, shared file %q, hostname %q; want %s", i, lines[1], lines[2], lines[3], mac)
		}
		if d := time.Now().Unix() - atoi(t, lines[4]); d < -5 || d > 60 {
			t.Fatalf("clone %d: guest clock %s off the host's by %ds", i, lines[4], d)
		}
	}
	if randoms[0] == randoms[1] || len(randoms[0]) != 64 {
		t.Fatalf("clones read the same random bytes: %q", randoms)
	}

	if _, err := template.Open(ctx, driver, template.Options{Dir: dir}); err == nil {
		t.Fatal("a second store opened a directory in use")
	}
	store.Close()
	s2 := openTemplates(t, dir, "a")
	if _, ok := s2.Lookup(cfg); !ok {
		t.Fatal("template gone after reopening the store")
	}
	s2.Close()
	if _, ok := openTemplates(t, dir, "b").Lookup(cfg); ok {
		t.Fatal("template kept after an input changed")
	}
	if _, err := os.Stat(filepath.Dir(tpl.State)); !os.IsNotExist(err) {
		t.Fatalf("stale template directory left: %v", err)
	}
}

func runIn(t *testing.T, ctx context.Context, c *agent.Client, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	st, err := c.Run(ctx, &agent.ProcessSpec{Id: "run" + time.Now().Format("150405.000000"), Args: args}, nil, &out, &errb)
	if err != nil || st.ExitCode != 0 {
		t.Fatalf("%v: %v %v: %s", args, st, err, errb.String())
	}
	return out.String()
}

func atoi(t *testing.T, s string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
