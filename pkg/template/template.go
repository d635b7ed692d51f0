// Package template keeps VM templates: a VM booted once per kernel, initrd,
// hypervisor and VM shape, paused at agent-ready, its RAM left in a file and
// its device state saved beside it. New VMs resume from a template instead of
// booting: they map its RAM file private (copy-on-write, so clones share
// every page none of them wrote) and load its device state.
//
// A template is built in a scratch directory and renamed into place with its
// description written last, so a half-built template is never used; a
// restart removes what a crash left. Templates whose inputs changed (a new
// kernel, initrd or QEMU) are removed when the store opens, and new ones are
// built on first use.
package template

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sync/singleflight"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/hyperlet/hyperlet/pkg/vm"
)

// format is bumped whenever what a template holds, or how VMs resume from
// it, changes in a way that makes old templates unusable. 2: TCG templates
// boot with their TSC rate given (tsc_early_khz); a format 1 one may have
// lost its TSC (pkg/vm/qemu/tsc.go). 3: the guest does not report free
// pages (pkg/vm/qemu, noReportArgs) and its agent holds a spare PID
// namespace.
const format = 3

// Files in a template directory.
const (
	memoryFile = "memory"
	stateFile  = "state"
	metaFile   = "template.json" // written last: its presence means complete
	vmFile     = "vm.json"       // a build's VM, to kill after a crash
)

// Store builds, finds and removes templates under one directory, which
// should be on a tmpfs: the RAM files live there.
type Store struct {
	dir string
	hv  vm.Hypervisor
	// ready waits until a booted VM's guest is ready to be frozen.
	ready func(ctx context.Context, v vm.VM) error
	// vmDir returns a short directory for a build's VM (socket paths).
	vmDir  func(id string) string
	inputs string // digest of the files every template depends on

	lock *os.File // flock: one daemon per template directory

	builds singleflight.Group
	mu     sync.Mutex
	failed map[string]time.Time // key -> last failed build
	// built and buildFailures count the builds since the store opened.
	built, buildFailures int
	// mem holds each template's RAM as a sealed memfd, loaded from its file
	// once: clones map it private, and nothing can write to it.
	mem map[string]*os.File
	// used is when each template was last looked up or built.
	used         map[string]time.Time
	maxTemplates int
	buildSlots   chan struct{}
}

// Template is a complete template on disk.
type Template struct {
	Key    string `json:"key"`
	Inputs string `json:"inputs"`
	Format int    `json:"format"`
	// Memory is the RAM file and State the device state clones load.
	Memory string `json:"memory"`
	State  string `json:"state"`
	// MAC is the template NIC's address; a clone's guest NIC still has it
	// until the agent changes it.
	MAC       string        `json:"mac,omitempty"`
	Built     time.Time     `json:"built"`
	BuildTime time.Duration `json:"buildTime"`
}

// Options configures a Store.
type Options struct {
	// Dir holds the templates; created if missing.
	Dir string
	// Files are the inputs every template depends on (kernel, initrd,
	// hypervisor binary): their contents are part of each template's key.
	Files []string
	// Extra is any other input that shapes a template (driver settings).
	Extra string
	// Ready waits until a booted VM's guest is ready to be frozen.
	Ready func(ctx context.Context, v vm.VM) error
	// VMDir returns the directory a build's VM runs in.
	VMDir func(id string) string
	// MaxTemplates bounds the templates kept (default 8): building one more
	// evicts the least recently used. MaxBuilds bounds builds running at
	// once (default 1).
	MaxTemplates, MaxBuilds int
}

// Open opens the store: it removes builds a crash interrupted (killing
// their VMs) and templates made from other inputs.
func Open(ctx context.Context, hv vm.Hypervisor, o Options) (*Store, error) {
	inputs, err := digestFiles(o.Files, o.Extra)
	if err != nil {
		return nil, fmt.Errorf("template inputs: %w", err)
	}
	if err := SecureDir(o.Dir); err != nil {
		return nil, fmt.Errorf("template dir: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(o.Dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("template dir %s is in use by another hyperlet: %w", o.Dir, err)
	}
	s := &Store{dir: o.Dir, hv: hv, ready: o.Ready, vmDir: o.VMDir, inputs: inputs, lock: lock, failed: map[string]time.Time{}, mem: map[string]*os.File{},
		used: map[string]time.Time{}, maxTemplates: o.MaxTemplates}
	if s.maxTemplates <= 0 {
		s.maxTemplates = 8
	}
	if o.MaxBuilds <= 0 {
		o.MaxBuilds = 1
	}
	s.buildSlots = make(chan struct{}, o.MaxBuilds)
	ents, err := os.ReadDir(o.Dir)
	if err != nil {
		lock.Close()
		return nil, err
	}
	for _, e := range ents {
		path := filepath.Join(o.Dir, e.Name())
		if e.Name() == ".lock" {
			continue
		}
		if strings.HasPrefix(e.Name(), ".build-") {
			s.discardBuild(ctx, path)
			continue
		}
		t, err := readMeta(path)
		if err != nil || t.Inputs != inputs || t.Format != format {
			klog.InfoS("removing stale VM template", "dir", path, "err", err)
			if err := os.RemoveAll(path); err != nil {
				lock.Close()
				return nil, fmt.Errorf("remove stale template: %w", err)
			}
		}
	}
	return s, nil
}

// Close releases the directory for another store. Clones keep running:
// their RAM file stays mapped.
func (s *Store) Close() error {
	s.mu.Lock()
	for k, f := range s.mem {
		f.Close()
		delete(s.mem, k)
	}
	s.mu.Unlock()
	return s.lock.Close()
}

// discardBuild removes an interrupted build and kills its VM if it runs.
func (s *Store) discardBuild(ctx context.Context, path string) {
	if b, err := os.ReadFile(filepath.Join(path, vmFile)); err == nil {
		var cfg vm.Config
		if json.Unmarshal(b, &cfg) == nil {
			if v, err := s.hv.Attach(ctx, cfg); err == nil {
				v.Kill()
			}
			os.RemoveAll(cfg.Dir)
		}
	}
	klog.InfoS("removing interrupted VM template build", "dir", path)
	os.RemoveAll(path)
}

// Key names the template for a VM configuration: the store's inputs and
// every setting that shapes the saved VM. IDs, paths and taps do not.
func (s *Store) Key(cfg vm.Config) string {
	h := sha256.New()
	fmt.Fprintf(h, "format=%d\ninputs=%s\nvcpus=%d\nmem=%d\naccel=%s\nnet=%t\nshared=%t\n",
		format, s.inputs, cfg.VCPUs, cfg.MemoryMiB, cfg.Accel, cfg.Net != nil, cfg.SharedDir != "")
	for _, a := range cfg.KernelArgs {
		fmt.Fprintf(h, "karg=%s\n", a)
	}
	return hex.EncodeToString(h.Sum(nil))[:32]
}

// Lookup returns the complete template for cfg, if there is one.
func (s *Store) Lookup(cfg vm.Config) (*Template, bool) {
	t, err := readMeta(filepath.Join(s.dir, s.Key(cfg)))
	if err != nil || t.Inputs != s.inputs || t.Format != format {
		return nil, false
	}
	s.mu.Lock()
	s.used[t.Key] = time.Now()
	s.mu.Unlock()
	return t, true
}

// Clone returns cfg set up to resume from t.
func (s *Store) Clone(cfg vm.Config, t *Template) (vm.Config, error) {
	mem, err := s.memory(t)
	if err != nil {
		return cfg, err
	}
	cfg.Memory = &vm.MemoryFile{Path: t.Memory, File: mem}
	cfg.Restore = t.State
	if cfg.Net != nil {
		n := *cfg.Net
		n.MAC = t.MAC
		cfg.Net = &n
	}
	return cfg, nil
}

// memory returns t's RAM as a sealed memfd, loading it from its file the
// first time.
func (s *Store) memory(t *Template) (*os.File, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f := s.mem[t.Key]; f != nil {
		return f, nil
	}
	src, err := os.OpenFile(t.Memory, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("template memory: %w", err)
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return nil, err
	}
	f, err := newMemfd("template-"+t.Key[:12], st.Size())
	if err != nil {
		return nil, err
	}
	if err := copySparse(f, src, st.Size()); err != nil {
		f.Close()
		return nil, fmt.Errorf("load template memory: %w", err)
	}
	if err := seal(f); err != nil {
		f.Close()
		return nil, err
	}
	s.mem[t.Key] = f
	return f, nil
}

// newMemfd makes an anonymous RAM file of size bytes that can be sealed.
func newMemfd(name string, size int64) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), name)
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// seal makes a memfd immutable: no writes, no shared writable mappings, no
// hole punching, no resizing, no unsealing.
func seal(f *os.File) error {
	_, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_WRITE|unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL)
	if err != nil {
		return fmt.Errorf("seal template memory: %w", err)
	}
	return nil
}

// copySparse copies the data regions of src's first size bytes into dst
// (which is size bytes of zeros), leaving holes as holes.
func copySparse(dst, src *os.File, size int64) error {
	var off int64
	for off < size {
		data, err := unix.Seek(int(src.Fd()), off, unix.SEEK_DATA)
		if err == unix.ENXIO {
			return nil
		}
		if err != nil {
			return err
		}
		hole, err := unix.Seek(int(src.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		if _, err := io.Copy(io.NewOffsetWriter(dst, data), io.NewSectionReader(src, data, hole-data)); err != nil {
			return err
		}
		off = hole
	}
	return nil
}

// retryAfter keeps a failing build from being retried by every pod.
const retryAfter = time.Minute

// Ensure returns the template for cfg, building it if there is none. Builds
// of one template are coalesced.
func (s *Store) Ensure(ctx context.Context, cfg vm.Config) (*Template, error) {
	if t, ok := s.Lookup(cfg); ok {
		return t, nil
	}
	key := s.Key(cfg)
	s.mu.Lock()
	last, failed := s.failed[key]
	s.mu.Unlock()
	if failed && time.Since(last) < retryAfter {
		return nil, fmt.Errorf("template %s: last build failed %s ago", key[:12], time.Since(last).Round(time.Second))
	}
	v, err, _ := s.builds.Do(key, func() (any, error) {
		if t, ok := s.Lookup(cfg); ok {
			return t, nil
		}
		// Builds outlive the request that asked first: others may wait too.
		bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
		defer cancel()
		// Builds boot VMs: a burst of new sizes must not boot them all.
		select {
		case s.buildSlots <- struct{}{}:
		case <-bctx.Done():
			return nil, fmt.Errorf("template %s: waiting for a build slot: %w", key[:12], bctx.Err())
		}
		defer func() { <-s.buildSlots }()
		s.evict(key)
		t, err := s.build(bctx, key, cfg)
		s.mu.Lock()
		if err != nil {
			s.failed[key] = time.Now()
			s.buildFailures++
		} else {
			delete(s.failed, key)
			s.built++
		}
		s.mu.Unlock()
		return t, err
	})
	if err != nil {
		return nil, err
	}
	return v.(*Template), nil
}

// Builds counts the builds since the store opened that succeeded and that
// failed.
func (s *Store) Builds() (ok, failed int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.built, s.buildFailures
}

// Prepare builds the template for cfg in the background if it is missing.
func (s *Store) Prepare(cfg vm.Config) {
	if _, ok := s.Lookup(cfg); ok {
		return
	}
	go func() {
		if _, err := s.Ensure(context.Background(), cfg); err != nil {
			klog.ErrorS(err, "build VM template")
		}
	}()
}

// build boots a VM on a shared RAM file, waits until it is ready, saves it
// and renames the result into place.
func (s *Store) build(ctx context.Context, key string, cfg vm.Config) (_ *Template, retErr error) {
	start := time.Now()
	suffix := randomHex(4)
	tmp := filepath.Join(s.dir, ".build-"+suffix)
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			os.RemoveAll(tmp)
		}
	}()
	t := &Template{Key: key, Inputs: s.inputs, Format: format}
	id := "tpl-" + suffix
	cfg.ID = id
	cfg.Dir = s.vmDir(id)
	cfg.ConsoleLog = filepath.Join(tmp, "console.log")
	// The builder belongs to no pod (whichever pod asked first).
	cfg.CgroupParent, cfg.OOMScoreAdj = "", 0
	mem, err := newMemfd("template-build-"+suffix, int64(cfg.MemoryMiB)<<20)
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			mem.Close()
		}
	}()
	cfg.Memory = &vm.MemoryFile{Path: filepath.Join(tmp, memoryFile), File: mem, Shared: true}
	cfg.Restore = ""
	if cfg.Net != nil {
		t.MAC = vm.RandomMAC()
		cfg.Net = &vm.NetDevice{MAC: t.MAC}
	}
	if cfg.SharedDir != "" {
		// The device must exist for clones to have it; the guest mounts
		// nothing before a pod is set up, so this stays empty.
		// It is outside the template directory, which only root may enter.
		cfg.SharedDir = cfg.Dir + ".share"
		if err := os.Mkdir(cfg.SharedDir, 0o755); err != nil {
			return nil, err
		}
		defer os.Remove(cfg.SharedDir)
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(tmp, vmFile), b, 0o600); err != nil {
		return nil, err
	}
	v, err := s.hv.Start(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("template %s: %w", key[:12], err)
	}
	defer v.Kill()
	if err := s.ready(ctx, v); err != nil {
		return nil, fmt.Errorf("template %s: %w", key[:12], err)
	}
	saver, ok := v.(vm.Saver)
	if !ok {
		return nil, errors.New("hypervisor cannot save VMs")
	}
	state := filepath.Join(tmp, stateFile)
	if err := saver.Save(ctx, state); err != nil {
		return nil, fmt.Errorf("template %s: %w", key[:12], err)
	}
	if err := v.Kill(); err != nil {
		return nil, err
	}
	os.Remove(filepath.Join(tmp, vmFile))
	os.Remove(cfg.ConsoleLog)
	// The builder is gone: seal its RAM for clones and keep a copy on disk
	// for the next daemon.
	if err := seal(mem); err != nil {
		return nil, err
	}
	if err := saveMemory(filepath.Join(tmp, memoryFile), mem, int64(cfg.MemoryMiB)<<20); err != nil {
		return nil, err
	}
	if err := syncFile(state); err != nil {
		return nil, err
	}
	final := filepath.Join(s.dir, key)
	t.Memory = filepath.Join(final, memoryFile)
	t.State = filepath.Join(final, stateFile)
	t.Built = time.Now()
	t.BuildTime = time.Since(start)
	if b, err = json.Marshal(t); err != nil {
		return nil, err
	}
	if err := writeFileSync(filepath.Join(tmp, metaFile), b); err != nil {
		return nil, err
	}
	os.RemoveAll(final) // an incomplete leftover under the final name
	if err := os.Rename(tmp, final); err != nil {
		return nil, err
	}
	s.mu.Lock()
	if old := s.mem[key]; old != nil {
		old.Close()
	}
	s.mem[key] = mem
	s.mu.Unlock()
	klog.InfoS("VM template built", "key", key[:12], "vcpus", cfg.VCPUs, "memoryMiB", cfg.MemoryMiB, "took", t.BuildTime)
	return t, nil
}

// saveMemory writes a template's RAM to path, sparse.
func saveMemory(path string, mem *os.File, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return err
	}
	return copySparse(f, mem, size)
}

// evict removes least recently used templates until one more (key) fits.
// Running clones keep their RAM: it is mapped from the memfd.
func (s *Store) evict(key string) {
	all := s.Templates()
	s.mu.Lock()
	defer s.mu.Unlock()
	sort.Slice(all, func(i, j int) bool { return s.lastUsed(all[i]).Before(s.lastUsed(all[j])) })
	for n := len(all); n >= s.maxTemplates && len(all) > 0; n-- {
		t := all[0]
		all = all[1:]
		if t.Key == key {
			continue
		}
		if err := os.RemoveAll(filepath.Join(s.dir, t.Key)); err != nil {
			klog.ErrorS(err, "evict VM template", "key", t.Key[:12])
			continue
		}
		if f := s.mem[t.Key]; f != nil {
			f.Close()
			delete(s.mem, t.Key)
		}
		delete(s.used, t.Key)
		klog.InfoS("VM template evicted (least recently used)", "key", t.Key[:12], "max", s.maxTemplates)
	}
}

// lastUsed is when t was last used, or built. s.mu is held.
func (s *Store) lastUsed(t *Template) time.Time {
	if u, ok := s.used[t.Key]; ok {
		return u
	}
	return t.Built
}

// Templates lists the complete templates.
func (s *Store) Templates() []*Template {
	ents, _ := os.ReadDir(s.dir)
	var out []*Template
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			continue // a build in progress
		}
		if t, err := readMeta(filepath.Join(s.dir, e.Name())); err == nil && t.Inputs == s.inputs {
			out = append(out, t)
		}
	}
	return out
}

// ResidentBytes is how much of the templates' RAM files is in memory.
func ResidentBytes(ts []*Template) int64 {
	var n int64
	for _, t := range ts {
		if st, err := os.Stat(t.Memory); err == nil {
			n += blocks(st)
		}
	}
	return n
}

// blocks is the space a file takes (a RAM file is sparse: only pages the
// guest wrote).
func blocks(st os.FileInfo) int64 {
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		return sys.Blocks * 512
	}
	return st.Size()
}

func readMeta(dir string) (*Template, error) {
	b, err := os.ReadFile(filepath.Join(dir, metaFile))
	if err != nil {
		return nil, err
	}
	var t Template
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, fmt.Errorf("%s: %w", metaFile, err)
	}
	if t.Key != filepath.Base(dir) {
		return nil, fmt.Errorf("%s: key %q in directory %q", metaFile, t.Key, filepath.Base(dir))
	}
	return &t, nil
}

// digestFiles hashes the contents of files and extra.
func digestFiles(files []string, extra string) (string, error) {
	h := sha256.New()
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			return "", err
		}
		n, err := io.Copy(h, fh)
		fh.Close()
		if err != nil {
			return "", fmt.Errorf("%s: %w", f, err)
		}
		fmt.Fprintf(h, "\n%s:%d\n", filepath.Base(f), n)
	}
	io.WriteString(h, extra)
	return hex.EncodeToString(h.Sum(nil)), nil
}

func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// ErrInsecureDir is a template directory others could write.
var ErrInsecureDir = errors.New("insecure template directory")

// SecureDir creates dir (mode 0700) if needed and checks that no one but
// root can change it or any directory above it: every component is a real
// directory (no symlink), owned by root, and writable by others only if
// sticky (as /dev/shm is, where others cannot replace root's entries). dir
// itself must be root's alone. RAM and device state of every clone live
// there: whoever could write it would control those VMs.
func SecureDir(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("%s: not an absolute path", dir)
	}
	dir = filepath.Clean(dir)
	parts := strings.Split(strings.TrimPrefix(dir, "/"), "/")
	cur := "/"
	for i, p := range parts {
		cur = filepath.Join(cur, p)
		last := i == len(parts)-1
		var st unix.Stat_t
		err := unix.Lstat(cur, &st)
		if errors.Is(err, unix.ENOENT) {
			if err := unix.Mkdir(cur, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("create %s: %w", cur, err)
			}
			if err = unix.Lstat(cur, &st); err != nil {
				return err
			}
		} else if err != nil {
			return err
		}
		switch {
		case st.Mode&unix.S_IFMT == unix.S_IFLNK:
			return fmt.Errorf("%w: %s is a symlink", ErrInsecureDir, cur)
		case st.Mode&unix.S_IFMT != unix.S_IFDIR:
			return fmt.Errorf("%s is not a directory", cur)
		case st.Uid != 0:
			return fmt.Errorf("%w: %s is owned by uid %d, not root", ErrInsecureDir, cur, st.Uid)
		case last && st.Mode&0o022 != 0:
			return fmt.Errorf("%w: %s is writable by group or others (mode %o)", ErrInsecureDir, cur, st.Mode&0o7777)
		case !last && st.Mode&0o022 != 0 && st.Mode&unix.S_ISVTX == 0:
			return fmt.Errorf("%w: %s is writable by group or others and not sticky (mode %o)", ErrInsecureDir, cur, st.Mode&0o7777)
		}
		if last && st.Mode&0o077 != 0 {
			if err := unix.Chmod(cur, 0o700); err != nil {
				return err
			}
		}
	}
	return nil
}
