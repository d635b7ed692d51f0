package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	securejoin "github.com/cyphar/filepath-securejoin"
	"github.com/moby/sys/user"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
)

const (
	imagesDir     = "/run/hyperlet/images"
	containersDir = "/run/hyperlet/containers"
	runcRoot      = "/run/runc"
	cgroupRoot    = "/sys/fs/cgroup"
	// cgroupParent holds one cgroup per container; runc puts the
	// container's processes in its "ctr" child, so the parent's memory.events
	// outlives runc's cleanup and tells whether the container was OOM-killed.
	cgroupParent = "hyperlet"
)

// containers tracks the images and containers of this VM's pod.
type containers struct {
	mu       sync.Mutex
	images   map[string]string // image ID -> mount point
	created  map[string]bool
	sharedFS bool // the host's shared directory is mounted

	// holderPID holds the pod's namespaces (0 without any): its PID
	// namespace if sharePID, its user and IPC namespaces if uidMap is set.
	holderPID int
	sharePID  bool
	// spare is a holder of a PID namespace alone, started ahead for a pod
	// that shares one (startSpareHolder).
	spare    *os.Process
	uidMap   []specs.LinuxIDMapping
	gidMap   []specs.LinuxIDMapping
	idmapped map[string]string // image ID -> its mount idmapped into the pod's user namespace
}

func newContainers() *containers {
	return &containers{images: map[string]string{}, created: map[string]bool{}, idmapped: map[string]string{}}
}

func validID(id string) error {
	if id == "" || len(id) > 128 || strings.ContainsAny(id, "/\x00") || id == "." || id == ".." {
		return status.Errorf(codes.InvalidArgument, "invalid id %q", id)
	}
	return nil
}

// mountImage mounts the disk at SCSI target:lun read-only under imagesDir.
func (c *containers) mountImage(req *agentapi.MountImageRequest) error {
	if err := validID(req.ImageId); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.images[req.ImageId]; ok {
		return nil
	}
	dev, err := waitSCSIDisk(req.ScsiTarget, req.ScsiLun, 10*time.Second)
	if err != nil {
		return status.Errorf(codes.NotFound, "image disk %d:%d: %v", req.ScsiTarget, req.ScsiLun, err)
	}
	fstype := req.Fstype
	if fstype == "" {
		fstype = "erofs"
	}
	mnt := filepath.Join(imagesDir, req.ImageId)
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return status.Errorf(codes.Internal, "mkdir: %v", err)
	}
	// A hot-added disk's node can exist before the disk is ready (ENXIO).
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := unix.Mount(dev, mnt, fstype, unix.MS_RDONLY|unix.MS_NODEV, "")
		if err == nil {
			break
		}
		if !errors.Is(err, unix.ENXIO) || time.Now().After(deadline) {
			return status.Errorf(codes.Internal, "mount %s (%s) on %s: %v", dev, fstype, mnt, err)
		}
		time.Sleep(diskPoll)
	}
	c.images[req.ImageId] = mnt
	klog.V(1).InfoS("image mounted", "image", req.ImageId, "dev", dev)
	return nil
}

// diskPoll is how often a hot-added disk is looked for: its scan takes
// 60-130 ms under TCG, and each look is one sysfs glob.
const diskPoll = 5 * time.Millisecond

// waitSCSIDisk finds the block device of a hot-added disk.
func waitSCSIDisk(target, lun uint32, timeout time.Duration) (string, error) {
	pattern := fmt.Sprintf("/sys/bus/scsi/devices/*:0:%d:%d/block/*", target, lun)
	deadline := time.Now().Add(timeout)
	for {
		m, _ := filepath.Glob(pattern)
		if len(m) == 1 {
			dev := "/dev/" + filepath.Base(m[0])
			size, _ := os.ReadFile(filepath.Join(m[0], "size"))
			if _, err := os.Stat(dev); err == nil && strings.TrimSpace(string(size)) != "0" && len(size) > 0 {
				return dev, nil
			}
		}
		if time.Now().After(deadline) {
			return "", errors.New("no block device appeared")
		}
		time.Sleep(diskPoll)
	}
}

func bundleDir(id string) string { return filepath.Join(containersDir, id) }

func cgroupDir(id string) string { return filepath.Join(cgroupRoot, cgroupParent, id) }

// create builds the container's bundle: overlay rootfs and config.json.
// It returns the user the container's process runs as.
func (c *containers) create(req *agentapi.CreateContainerRequest) (specs.User, error) {
	var spec specs.Spec
	if err := c.createSpec(req, &spec); err != nil {
		return specs.User{}, err
	}
	return spec.Process.User, nil
}

func (c *containers) createSpec(req *agentapi.CreateContainerRequest, spec *specs.Spec) (retErr error) {
	if err := validID(req.Id); err != nil {
		return err
	}
	if err := json.Unmarshal(req.Spec, spec); err != nil {
		return status.Errorf(codes.InvalidArgument, "decode spec: %v", err)
	}
	if spec.Process == nil || spec.Linux == nil {
		return status.Error(codes.InvalidArgument, "spec has no process or linux section")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.created[req.Id] {
		return status.Errorf(codes.AlreadyExists, "container %q exists", req.Id)
	}
	lower, ok := c.images[req.ImageId]
	if !ok {
		return status.Errorf(codes.FailedPrecondition, "image %q is not mounted", req.ImageId)
	}
	dir := bundleDir(req.Id)
	rootfs := filepath.Join(dir, "rootfs")
	upper := filepath.Join(dir, "upper")
	work := filepath.Join(dir, "work")
	for _, d := range []string{rootfs, upper, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return status.Errorf(codes.Internal, "mkdir: %v", err)
		}
	}
	defer func() {
		if retErr != nil {
			unix.Unmount(rootfs, unix.MNT_DETACH)
			os.RemoveAll(dir)
		}
	}()
	userns := usesPodUserns(spec)
	if userns {
		// The image is seen through an idmapped mount, so its root owns
		// it inside the pod's user namespace; the upper layer's root (the
		// rootfs' top directory) belongs to that root too.
		idm, err := c.idmappedImage(req.ImageId, lower)
		if err != nil {
			return err
		}
		lower = idm
		uid, uok := hostID(c.uidMap, 0)
		gid, gok := hostID(c.gidMap, 0)
		if !uok || !gok {
			return status.Error(codes.FailedPrecondition, "the pod's user namespace does not map root")
		}
		if err := os.Chown(upper, int(uid), int(gid)); err != nil {
			return status.Errorf(codes.Internal, "chown upper: %v", err)
		}
	}
	if err := c.imageVolumes(req.ImageVolumes, spec, userns); err != nil {
		return err
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, upper, work)
	if err := unix.Mount("overlay", rootfs, "overlay", 0, opts); err != nil {
		return status.Errorf(codes.Internal, "mount overlay rootfs: %v", err)
	}
	if err := prepareCgroup(req.Id); err != nil {
		return status.Errorf(codes.Internal, "cgroup: %v", err)
	}
	if err := resolveUser(spec, c.images[req.ImageId], req.User, req.StrictGroups); err != nil {
		return err
	}
	spec.Root = &specs.Root{Path: "rootfs", Readonly: spec.Root != nil && spec.Root.Readonly}
	spec.Linux.CgroupsPath = "/" + cgroupParent + "/" + req.Id + "/ctr"
	if err := c.podNamespaces(spec); err != nil {
		return err
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return status.Errorf(codes.Internal, "encode spec: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600); err != nil {
		return status.Errorf(codes.Internal, "write spec: %v", err)
	}
	c.created[req.Id] = true
	return nil
}

// imageVolumes adds a read-only bind mount to the spec for each image
// volume, from the image's mount (idmapped into the pod's user namespace
// when the container is in it). The sub path is resolved inside the image
// (symlinks included); the image is read-only, so the resolved path stays
// what it was checked to be. c.mu is held.
func (c *containers) imageVolumes(vols []*agentapi.ImageVolume, spec *specs.Spec, userns bool) error {
	for _, v := range vols {
		src, ok := c.images[v.ImageId]
		if !ok {
			return status.Errorf(codes.FailedPrecondition, "image %q of a volume is not mounted", v.ImageId)
		}
		if !filepath.IsAbs(v.Destination) {
			return status.Errorf(codes.InvalidArgument, "image volume destination %q is not absolute", v.Destination)
		}
		if v.SubPath != "" && !filepath.IsLocal(v.SubPath) {
			return status.Errorf(codes.InvalidArgument, "image volume sub path %q leaves the image", v.SubPath)
		}
		if userns {
			var err error
			if src, err = c.idmappedImage(v.ImageId, src); err != nil {
				return err
			}
		}
		p, err := securejoin.SecureJoin(src, v.SubPath)
		if err != nil {
			return status.Errorf(codes.InvalidArgument, "image volume sub path %q: %v", v.SubPath, err)
		}
		if _, err := os.Stat(p); err != nil {
			return status.Errorf(codes.InvalidArgument, "image volume sub path %q is not in the image: %v", v.SubPath, err)
		}
		spec.Mounts = append(spec.Mounts, specs.Mount{
			Destination: v.Destination, Type: "bind", Source: p,
			Options: []string{"rbind", "ro", "nosuid", "nodev"},
		})
	}
	return nil
}

// prepareCgroup creates the container's parent cgroup with the controllers
// runc needs enabled below it.
func prepareCgroup(id string) error {
	ctrl := []byte("+cpu +memory +pids +cpuset")
	for _, d := range []string{cgroupRoot, filepath.Join(cgroupRoot, cgroupParent), cgroupDir(id)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(d, "cgroup.subtree_control"), ctrl, 0); err != nil {
			return fmt.Errorf("enable controllers in %s: %w", d, err)
		}
	}
	return nil
}

// start runs `runc run` on the bundle as a process of the process table.
func (c *containers) start(t *procTable, req *agentapi.StartContainerRequest) (*process, error) {
	c.mu.Lock()
	ok := c.created[req.Id]
	c.mu.Unlock()
	if !ok {
		return nil, status.Errorf(codes.NotFound, "container %q not found", req.Id)
	}
	dir := bundleDir(req.Id)
	spec, err := readSpec(dir)
	if err != nil {
		return nil, err
	}
	pidFile := filepath.Join(dir, "init.pid")
	hooks := &procHooks{pidFile: pidFile, cgroup: cgroupDir(req.Id), exe: runtimeExe()}
	args := []string{agentapi.RuntimePath, "--root", runcRoot, "run", "--bundle", dir, "--pid-file", pidFile}
	if spec.Process.Terminal {
		hooks.consoleSocket = consoleSocket()
		args = append(args, "--console-socket", hooks.consoleSocket)
	}
	return t.start(&agentapi.StartProcessRequest{
		Id:    req.Id,
		Args:  append(args, req.Id),
		Env:   []string{"PATH=" + defaultPath},
		Tty:   spec.Process.Terminal,
		Stdin: req.Stdin,
		Rows:  req.Rows,
		Cols:  req.Cols,
	}, hooks)
}

// exec runs `runc exec` for an extra process in a running container.
func (c *containers) exec(t *procTable, req *agentapi.ExecProcessRequest) (*process, error) {
	if err := validID(req.ExecId); err != nil {
		return nil, err
	}
	c.mu.Lock()
	ok := c.created[req.ContainerId]
	c.mu.Unlock()
	if !ok {
		return nil, status.Errorf(codes.NotFound, "container %q not found", req.ContainerId)
	}
	var proc specs.Process
	if err := json.Unmarshal(req.Process, &proc); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "decode process: %v", err)
	}
	if len(proc.Args) == 0 {
		return nil, status.Error(codes.InvalidArgument, "exec needs args")
	}
	spec, err := readSpec(bundleDir(req.ContainerId))
	if err != nil {
		return nil, err
	}
	// The exec'd process runs as the container's process does.
	base := *spec.Process
	base.Args, base.Terminal, base.ConsoleSize = proc.Args, proc.Terminal, nil
	if proc.Env != nil {
		base.Env = proc.Env
	}
	if proc.Cwd != "" {
		base.Cwd = proc.Cwd
	}
	processJSON, err := json.Marshal(&base)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "encode process: %v", err)
	}
	dir := filepath.Join(bundleDir(req.ContainerId), "exec")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, status.Errorf(codes.Internal, "mkdir: %v", err)
	}
	procFile := filepath.Join(dir, req.ExecId+".json")
	if err := os.WriteFile(procFile, processJSON, 0o600); err != nil {
		return nil, status.Errorf(codes.Internal, "write process: %v", err)
	}
	pidFile := filepath.Join(dir, req.ExecId+".pid")
	hooks := &procHooks{pidFile: pidFile, cleanup: []string{procFile, pidFile}, exe: runtimeExe()}
	args := []string{agentapi.RuntimePath, "--root", runcRoot, "exec", "--process", procFile, "--pid-file", pidFile}
	if base.Terminal {
		hooks.consoleSocket = consoleSocket()
		args = append(args, "--console-socket", hooks.consoleSocket)
	}
	return t.start(&agentapi.StartProcessRequest{
		Id:    req.ExecId,
		Args:  append(args, req.ContainerId),
		Env:   []string{"PATH=" + defaultPath},
		Tty:   base.Terminal,
		Stdin: req.Stdin,
		Rows:  req.Rows,
		Cols:  req.Cols,
	}, hooks)
}

// update applies new cgroup limits with `runc update`.
func (c *containers) update(req *agentapi.UpdateContainerRequest) error {
	f := filepath.Join(bundleDir(req.Id), "resources.json")
	if err := os.WriteFile(f, req.Resources, 0o600); err != nil {
		return status.Errorf(codes.NotFound, "container %q: %v", req.Id, err)
	}
	out, err := runRunc("update", "--resources", f, req.Id)
	if err != nil {
		return status.Errorf(codes.FailedPrecondition, "runc update: %v: %s", err, out)
	}
	return nil
}

// remove kills the container if needed and frees its bundle and cgroup.
func (c *containers) remove(t *procTable, id string) error {
	if err := validID(id); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if out, err := runRunc("delete", "--force", id); err != nil && !strings.Contains(string(out), "does not exist") {
		klog.InfoS("runc delete", "id", id, "err", err, "output", string(out))
	}
	// runc run exits once its container is gone; wait briefly for the reaper.
	if p, err := t.get(id); err == nil {
		select {
		case <-p.exited:
		case <-time.After(5 * time.Second):
			return status.Errorf(codes.DeadlineExceeded, "container %q did not exit", id)
		}
	}
	dir := bundleDir(id)
	if err := unix.Unmount(filepath.Join(dir, "rootfs"), unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return status.Errorf(codes.Internal, "unmount rootfs: %v", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return status.Errorf(codes.Internal, "remove bundle: %v", err)
	}
	cg := cgroupDir(id)
	os.Remove(filepath.Join(cg, "ctr"))
	if err := os.Remove(cg); err != nil && !os.IsNotExist(err) {
		return status.Errorf(codes.Internal, "remove cgroup: %v", err)
	}
	delete(c.created, id)
	return nil
}

// consoleSocket names a new console socket: short, since a socket path
// has at most 107 bytes.
func consoleSocket() string {
	var b [8]byte
	rand.Read(b[:])
	return filepath.Join(os.TempDir(), fmt.Sprintf("console-%x.sock", b))
}

func runRunc(args ...string) ([]byte, error) {
	cmd := exec.Command(runtimeExe(), append([]string{"--root", runcRoot}, args...)...)
	cmd.Args[0] = agentapi.RuntimePath
	return cmd.CombinedOutput()
}

func readSpec(dir string) (*specs.Spec, error) {
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, status.Errorf(codes.Internal, "read spec: %v", err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		return nil, status.Errorf(codes.Internal, "decode spec: %v", err)
	}
	return &spec, nil
}

// oomKilled reads the oom_kill counter of a cgroup's memory.events.
func oomKilled(cgroup string) bool {
	return flatKeyed(filepath.Join(cgroup, "memory.events"))["oom_kill"] > 0
}

func readPID(file string) (int, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// resolveUser sets process.user from "user[:group]" looked up in the image's
// /etc/passwd and /etc/group, read through an os.Root so that symlinks in
// the image cannot point the lookup at guest files. strict leaves out the
// user's groups from /etc/group (SupplementalGroupsPolicy Strict).
func resolveUser(spec *specs.Spec, imageRoot, userSpec string, strict bool) error {
	if userSpec == "" {
		userSpec = "0"
	}
	root, err := os.OpenRoot(imageRoot)
	if err != nil {
		return status.Errorf(codes.Internal, "open image: %v", err)
	}
	defer root.Close()
	passwd, group := imageFile(root, "etc/passwd"), imageFile(root, "etc/group")
	u, err := user.GetExecUser(userSpec, &user.ExecUser{Home: "/"}, passwd(), group())
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "user %q: %v", userSpec, err)
	}
	// An explicit group does not drop the user's groups from /etc/group
	// (Kubernetes' default Merge policy): look them up by user alone.
	if strict {
		u.Sgids = nil
	} else if name, _, ok := strings.Cut(userSpec, ":"); ok {
		if alone, err := user.GetExecUser(name, &user.ExecUser{}, passwd(), group()); err == nil {
			u.Sgids = append(u.Sgids, alone.Sgids...)
		}
	}
	add := spec.Process.User.AdditionalGids
	spec.Process.User = specs.User{UID: uint32(u.Uid), GID: uint32(u.Gid)}
	// The primary group is listed too, as containerd does.
	seen := map[uint32]bool{}
	for _, g := range append(append([]uint32{uint32(u.Gid)}, intsToU32(u.Sgids)...), add...) {
		if !seen[g] {
			seen[g] = true
			spec.Process.User.AdditionalGids = append(spec.Process.User.AdditionalGids, g)
		}
	}
	if envValue(spec.Process.Env, "HOME") == "" {
		spec.Process.Env = append(spec.Process.Env, "HOME="+u.Home)
	}
	return nil
}

// imageFile reads a file of the image once (at most 4 MiB) and returns a
// function giving a fresh reader over it, or nil when the file is missing.
func imageFile(root *os.Root, name string) func() io.Reader {
	var b []byte
	if f, err := root.Open(name); err == nil {
		b, err = io.ReadAll(io.LimitReader(f, 4<<20))
		f.Close()
		if err != nil {
			b = nil
		}
	}
	return func() io.Reader {
		if b == nil {
			return nil
		}
		return bytes.NewReader(b)
	}
}

func intsToU32(in []int) []uint32 {
	out := make([]uint32, 0, len(in))
	for _, v := range in {
		out = append(out, uint32(v))
	}
	return out
}
