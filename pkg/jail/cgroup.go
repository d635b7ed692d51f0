package jail

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// cgroupRoot is where cgroup hierarchies are mounted.
var cgroupRoot = "/sys/fs/cgroup"

// v1Controllers are the cgroup v1 hierarchies a VM's cgroup is made in.
var v1Controllers = []string{"memory", "pids", "cpu", "cpuacct"}

// Cgroup is one VM's cgroup: a directory per v1 hierarchy, or one in the
// v2 unified hierarchy.
type Cgroup struct {
	Dirs []string
}

// Limits bound a VM's cgroup.
type Limits struct {
	MemoryBytes int64 // 0: none
	Pids        int64 // 0: none
}

// IsV2 reports whether the host mounts the cgroup v2 unified hierarchy at
// the cgroup root.
func IsV2() bool {
	var st unix.Statfs_t
	return unix.Statfs(cgroupRoot, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
}

// CgroupPath turns a CRI cgroup parent into a path relative to a
// hierarchy's root: cgroupfs style ("/kubepods/burstable/pod1") as is,
// systemd style ("kubepods-burstable-pod1.slice") expanded to its slices.
func CgroupPath(parent, name string) (string, error) {
	if strings.Contains(name, "/") || name == "" || name == "." || name == ".." {
		return "", fmt.Errorf("bad cgroup name %q", name)
	}
	var p string
	if strings.HasSuffix(parent, ".slice") && !strings.Contains(parent, "/") {
		base := strings.TrimSuffix(parent, ".slice")
		if base == "" || base == "-" {
			p = ""
		} else {
			parts := strings.Split(base, "-")
			for i := range parts {
				if parts[i] == "" {
					return "", fmt.Errorf("bad systemd slice %q", parent)
				}
				p = filepath.Join(p, strings.Join(parts[:i+1], "-")+".slice")
			}
		}
	} else {
		p = filepath.Clean("/" + parent)
	}
	p = filepath.Join("/", p, name)
	if strings.Contains(p, "/../") {
		return "", fmt.Errorf("bad cgroup parent %q", parent)
	}
	return p, nil
}

// hierarchy is one cgroup hierarchy a VM is accounted in.
type hierarchy struct {
	root       string
	memoryFile string // the memory limit's file, "" if not a memory hierarchy
	pidsFile   string
}

// hierarchies lists where a VM's cgroup goes: the v2 unified hierarchy, or
// each v1 hierarchy of v1Controllers the host mounts.
func hierarchies() []hierarchy {
	if IsV2() {
		return []hierarchy{{root: cgroupRoot, memoryFile: "memory.max", pidsFile: "pids.max"}}
	}
	var out []hierarchy
	for _, c := range v1Controllers {
		h := hierarchy{root: filepath.Join(cgroupRoot, c)}
		if _, err := os.Stat(filepath.Join(h.root, "cgroup.procs")); err != nil {
			continue
		}
		switch c {
		case "memory":
			h.memoryFile = "memory.limit_in_bytes"
		case "pids":
			h.pidsFile = "pids.max"
		}
		out = append(out, h)
	}
	return out
}

// NewCgroup creates the cgroup rel (from CgroupPath) with limits, in every
// hierarchy the VM is accounted in.
func NewCgroup(rel string, l Limits) (_ *Cgroup, retErr error) {
	cg := &Cgroup{}
	defer func() {
		if retErr != nil {
			cg.Remove()
		}
	}()
	for _, h := range hierarchies() {
		dir := filepath.Join(h.root, rel)
		if err := mkdirCgroup(dir); err != nil {
			return nil, err
		}
		cg.Dirs = append(cg.Dirs, dir)
		if h.memoryFile != "" && l.MemoryBytes > 0 {
			if err := writeCg(dir, h.memoryFile, l.MemoryBytes); err != nil {
				return nil, err
			}
			if h.root == cgroupRoot {
				writeCg(dir, "memory.swap.max", 0) // v2: no swap either
			}
		}
		if h.pidsFile != "" && l.Pids > 0 {
			if err := writeCg(dir, h.pidsFile, l.Pids); err != nil {
				return nil, err
			}
		}
	}
	if len(cg.Dirs) == 0 {
		return nil, errors.New("no cgroup hierarchy found")
	}
	return cg, nil
}

// OpenCgroup names an existing cgroup (after a daemon restart).
func OpenCgroup(rel string) *Cgroup {
	cg := &Cgroup{}
	for _, h := range hierarchies() {
		cg.Dirs = append(cg.Dirs, filepath.Join(h.root, rel))
	}
	return cg
}

func mkdirCgroup(dir string) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("cgroup parent: %w", err)
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create cgroup: %w", err)
	}
	return nil
}

func writeCg(dir, file string, v int64) error {
	if err := os.WriteFile(filepath.Join(dir, file), []byte(strconv.FormatInt(v, 10)), 0); err != nil {
		return fmt.Errorf("cgroup %s: %w", file, err)
	}
	return nil
}

// Add moves a process (all its threads) into the cgroup.
func (cg *Cgroup) Add(pid int) error {
	for _, d := range cg.Dirs {
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
			return fmt.Errorf("join cgroup %s: %w", d, err)
		}
	}
	return nil
}

// Remove deletes the cgroup once its processes are gone.
func (cg *Cgroup) Remove() error {
	var errs []error
	for _, d := range cg.Dirs {
		var err error
		// A just-exited process can linger in cgroup.procs for a moment.
		for i := 0; i < 50; i++ {
			if err = unix.Rmdir(d); err == nil || errors.Is(err, unix.ENOENT) {
				err = nil
				break
			}
			if !errors.Is(err, unix.EBUSY) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// SweepCgroups removes the empty cgroups named prefix+ID, anywhere in the
// hierarchies VMs are accounted in, whose ID keep rejects. It returns the
// IDs removed.
func SweepCgroups(prefix string, keep func(id string) bool) ([]string, error) {
	found := map[string]bool{}
	var errs []error
	for _, h := range hierarchies() {
		filepath.WalkDir(h.root, func(path string, e os.DirEntry, err error) error {
			if err != nil || !e.IsDir() {
				return nil
			}
			id, ok := strings.CutPrefix(e.Name(), prefix)
			if !ok {
				return nil
			}
			if !keep(id) {
				if err := (&Cgroup{Dirs: []string{path}}).Remove(); err != nil {
					errs = append(errs, err)
				} else {
					found[id] = true
				}
			}
			return filepath.SkipDir
		})
	}
	ids := make([]string, 0, len(found))
	for id := range found {
		ids = append(ids, id)
	}
	return ids, errors.Join(errs...)
}
