package template

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/hyperlet/hyperlet/pkg/vm"
)

// noHypervisor has no VMs: every attach finds the VM gone.
type noHypervisor struct{ attached []string }

func (h *noHypervisor) Start(context.Context, vm.Config) (vm.VM, error) {
	return nil, errors.New("no VMs in unit tests")
}

func (h *noHypervisor) Sweep(context.Context, string, func(string) bool) ([]string, error) {
	return nil, nil
}

func (h *noHypervisor) Attach(_ context.Context, cfg vm.Config) (vm.VM, error) {
	h.attached = append(h.attached, cfg.ID)
	return nil, vm.ErrNotRunning
}

func TestOpenKeepsOnlyCompleteCurrentTemplates(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	os.WriteFile(kernel, []byte("kernel v1"), 0o644)
	tdir := filepath.Join(dir, "templates")
	hv := &noHypervisor{}
	open := func() *Store {
		t.Helper()
		s, err := Open(context.Background(), hv, Options{Dir: tdir, Files: []string{kernel}})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := open()
	cfg := vm.Config{VCPUs: 1, MemoryMiB: 256, Accel: vm.AccelTCG, Net: &vm.NetDevice{}}
	write := func(name string, t2 Template) {
		os.MkdirAll(filepath.Join(tdir, name), 0o700)
		b, _ := json.Marshal(t2)
		os.WriteFile(filepath.Join(tdir, name, metaFile), b, 0o600)
	}
	key := s.Key(cfg)
	write(key, Template{Key: key, Inputs: s.inputs, Format: format})
	other := cfg
	other.MemoryMiB = 512
	write(s.Key(other), Template{Key: s.Key(other), Inputs: "old kernel", Format: format}) // stale inputs
	os.MkdirAll(filepath.Join(tdir, "0123456789abcdef"), 0o700)                            // no description: incomplete
	os.MkdirAll(filepath.Join(tdir, ".build-1a2b3c4d"), 0o700)                             // interrupted build
	vmJSON, _ := json.Marshal(vm.Config{ID: "tpl-1a2b3c4d", Dir: filepath.Join(dir, "vmdir")})
	os.WriteFile(filepath.Join(tdir, ".build-1a2b3c4d", vmFile), vmJSON, 0o600)
	os.MkdirAll(filepath.Join(dir, "vmdir"), 0o700)
	s.Close()

	s = open()
	defer s.Close()
	if _, ok := s.Lookup(cfg); !ok {
		t.Error("complete template with current inputs was not kept")
	}
	if _, ok := s.Lookup(other); ok {
		t.Error("template with other inputs is still used")
	}
	ents, _ := os.ReadDir(tdir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if len(names) != 2 || names[0] != ".lock" || names[1] != key {
		t.Errorf("after open: %v, want [.lock %s]", names, key)
	}
	if len(hv.attached) != 1 || hv.attached[0] != "tpl-1a2b3c4d" {
		t.Errorf("interrupted build's VM not looked for: %v", hv.attached)
	}
	if _, err := os.Stat(filepath.Join(dir, "vmdir")); !os.IsNotExist(err) {
		t.Errorf("interrupted build's VM directory left: %v", err)
	}

	// A changed input makes every template stale.
	s.Close()
	os.WriteFile(kernel, []byte("kernel v2"), 0o644)
	s = open()
	if _, ok := s.Lookup(cfg); ok {
		t.Error("template kept after the kernel changed")
	}
}

func TestKeyCoversShape(t *testing.T) {
	s := &Store{inputs: "x"}
	base := vm.Config{ID: "a", Dir: "/a", VCPUs: 1, MemoryMiB: 256, Accel: vm.AccelTCG, Net: &vm.NetDevice{MAC: "02:00:00:00:00:01"}, SharedDir: "/s"}
	same := base
	same.ID, same.Dir, same.SharedDir, same.Net = "b", "/b", "/t", &vm.NetDevice{MAC: "02:00:00:00:00:02"}
	if s.Key(base) != s.Key(same) {
		t.Error("IDs, paths and MACs changed the key")
	}
	for name, mod := range map[string]func(*vm.Config){
		"vcpus":     func(c *vm.Config) { c.VCPUs = 2 },
		"memory":    func(c *vm.Config) { c.MemoryMiB = 512 },
		"accel":     func(c *vm.Config) { c.Accel = vm.AccelKVM },
		"no NIC":    func(c *vm.Config) { c.Net = nil },
		"no shared": func(c *vm.Config) { c.SharedDir = "" },
		"karg":      func(c *vm.Config) { c.KernelArgs = []string{"x=1"} },
	} {
		c := base
		mod(&c)
		if s.Key(c) == s.Key(base) {
			t.Errorf("%s: same key", name)
		}
	}
}

func TestSecureDir(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("this test needs root, as hyperlet does")
	}
	base := t.TempDir()
	os.Chmod(base, 0o755)
	other := filepath.Join(base, "other")
	os.Mkdir(other, 0o700)
	os.Chown(other, 1234, 1234)
	open := filepath.Join(base, "open")
	os.Mkdir(open, 0o777)
	os.Chmod(open, 0o777)
	link := filepath.Join(base, "link")
	os.Symlink(base, link)
	readable := filepath.Join(base, "readable")
	os.Mkdir(readable, 0o755)
	tests := []struct {
		name, dir string
		wantErr   bool
	}{
		{"created", filepath.Join(base, "new", "templates"), false},
		{"owned by another user", other, true},
		{"below another user's directory", filepath.Join(other, "t"), true},
		{"world-writable", open, true},
		{"below a world-writable non-sticky directory", filepath.Join(open, "t"), true},
		{"through a symlink", filepath.Join(link, "t"), true},
		{"readable by others is tightened", readable, false},
		{"relative", "templates", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := SecureDir(tc.dir)
			if (err != nil) != tc.wantErr {
				t.Fatalf("SecureDir(%s) = %v, want error %v", tc.dir, err, tc.wantErr)
			}
			if err == nil {
				st, _ := os.Stat(tc.dir)
				if st.Mode().Perm() != 0o700 {
					t.Errorf("mode %o, want 700", st.Mode().Perm())
				}
			}
		})
	}
}

func TestEvictLeastRecentlyUsed(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	os.WriteFile(kernel, []byte("k"), 0o644)
	tdir := filepath.Join(dir, "templates")
	s, err := Open(context.Background(), &noHypervisor{}, Options{Dir: tdir, Files: []string{kernel}, MaxTemplates: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cfgs := map[string]vm.Config{}
	for _, mib := range []int{256, 512} {
		cfg := vm.Config{VCPUs: 1, MemoryMiB: mib, Accel: vm.AccelTCG}
		key := s.Key(cfg)
		cfgs[key] = cfg
		os.MkdirAll(filepath.Join(tdir, key), 0o700)
		b, _ := json.Marshal(Template{Key: key, Inputs: s.inputs, Format: format})
		os.WriteFile(filepath.Join(tdir, key, metaFile), b, 0o600)
	}
	small := vm.Config{VCPUs: 1, MemoryMiB: 256, Accel: vm.AccelTCG}
	big := vm.Config{VCPUs: 1, MemoryMiB: 512, Accel: vm.AccelTCG}
	s.Lookup(big)
	s.Lookup(small) // big is now the least recently used
	s.evict(s.Key(vm.Config{VCPUs: 2, MemoryMiB: 256, Accel: vm.AccelTCG}))
	if _, ok := s.Lookup(big); ok {
		t.Error("least recently used template was kept")
	}
	if _, ok := s.Lookup(small); !ok {
		t.Error("recently used template was evicted")
	}
}
