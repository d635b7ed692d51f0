package main

import (
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
)

// setupPod applies the pod's identity to the VM.
func (c *containers) setupPod(req *agentapi.SetupPodRequest) error {
	if err := os.MkdirAll(agentapi.PodShmDir, 0o755); err != nil {
		return status.Errorf(codes.Internal, "mkdir: %v", err)
	}
	if isSameFS(agentapi.PodShmDir, agentapi.PodDir) {
		if err := unix.Mount("shm", agentapi.PodShmDir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=1777,size=65536k"); err != nil {
			return status.Errorf(codes.Internal, "mount pod shm: %v", err)
		}
	}
	if err := setupNetwork(req.Interfaces, req.Routes); err != nil {
		return err
	}
	if req.Hostname != "" {
		if err := unix.Sethostname([]byte(req.Hostname)); err != nil {
			return status.Errorf(codes.InvalidArgument, "set hostname %q: %v", req.Hostname, err)
		}
	}
	host, _ := os.Hostname()
	files := map[string][]byte{
		agentapi.PodHostnameFile: []byte(host + "\n"),
		agentapi.PodHostsFile:    req.Hosts,
		agentapi.PodResolvConf:   req.ResolvConf,
	}
	for f, b := range files {
		if err := writeFileAtomic(f, b, 0o644); err != nil {
			return status.Errorf(codes.Internal, "write %s: %v", f, err)
		}
	}
	for k, v := range req.Sysctls {
		if strings.Contains(k, "..") || strings.ContainsAny(k, "\x00") {
			return status.Errorf(codes.InvalidArgument, "invalid sysctl %q", k)
		}
		f := filepath.Join("/proc/sys", strings.ReplaceAll(k, ".", "/"))
		if err := os.WriteFile(f, []byte(v), 0); err != nil {
			return status.Errorf(codes.InvalidArgument, "sysctl %s=%s: %v", k, v, err)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if req.SharedFs && !c.sharedFS {
		if err := os.MkdirAll(agentapi.SharedDir, 0o755); err != nil {
			return status.Errorf(codes.Internal, "mkdir: %v", err)
		}
		opts := "trans=virtio,version=9p2000.L,msize=524288,cache=none,access=client"
		if err := unix.Mount(agentapi.SharedFSTag, agentapi.SharedDir, "9p", unix.MS_NODEV, opts); err != nil {
			return status.Errorf(codes.Internal, "mount shared directory: %v", err)
		}
		c.sharedFS = true
	}
	if err := c.startHolder(req); err != nil {
		return err
	}
	return nil
}

// startHolder starts the process that holds the pod's namespaces: its PID
// namespace when containers share one, and its user namespace (with an IPC
// namespace the user namespace owns) when the pod has ID mappings. The PID
// namespace is then owned by the user namespace, so containers in it can
// mount their /proc. c.mu is held.
func (c *containers) startHolder(req *agentapi.SetupPodRequest) error {
	userns := len(req.UidMappings) > 0 || len(req.GidMappings) > 0
	if c.holderPID != 0 || (!req.SharePid && !userns) {
		return nil
	}
	if !userns && c.adoptSpare() {
		klog.V(1).InfoS("pod namespaces", "holder", c.holderPID, "sharePid", true, "spare", true)
		return nil
	}
	attr := &syscall.SysProcAttr{Setsid: true}
	if req.SharePid {
		attr.Cloneflags |= unix.CLONE_NEWPID
	}
	if userns {
		if len(req.UidMappings) == 0 || len(req.GidMappings) == 0 {
			return status.Error(codes.InvalidArgument, "a user namespace needs both UID and GID mappings")
		}
		attr.Cloneflags |= unix.CLONE_NEWUSER | unix.CLONE_NEWIPC
		attr.UidMappings, attr.GidMappings = sysIDMaps(req.UidMappings), sysIDMaps(req.GidMappings)
		// Containers set their supplementary groups.
		attr.GidMappingsEnableSetgroups = true
	}
	cmd := holderCmd(attr)
	if err := cmd.Start(); err != nil {
		return status.Errorf(codes.Internal, "start pod namespace holder: %v", err)
	}
	c.holderPID, c.sharePID = cmd.Process.Pid, req.SharePid
	if userns {
		c.uidMap, c.gidMap = specIDMaps(req.UidMappings), specIDMaps(req.GidMappings)
	}
	klog.V(1).InfoS("pod namespaces", "holder", c.holderPID, "sharePid", req.SharePid, "userns", userns)
	return nil
}

// holderCmd runs this binary as pause. It never allocates after its
// start, so it runs without a periodic GC.
func holderCmd(attr *syscall.SysProcAttr) *exec.Cmd {
	return &exec.Cmd{Path: "/init", Args: []string{"/init", "pause"}, Env: []string{"GOGC=off"}, SysProcAttr: attr}
}

// startSpareHolder starts a namespace holder with a PID namespace of its
// own before the agent first answers, so that a template's clones inherit
// it running: a pod that shares one PID namespace (the CRI's default when
// the caller does not say) adopts it instead of starting a Go process under
// the pod's start. Under TCG that start ran beside the pod's first
// CreateContainer and displaced its translations: ~0.3 s of a ~1.5 s pod
// start (docs/performance.md). A pod that does not share one, or has a
// user namespace, leaves it idle.
func (c *containers) startSpareHolder() {
	cmd := holderCmd(&syscall.SysProcAttr{Setsid: true, Cloneflags: unix.CLONE_NEWPID})
	if err := cmd.Start(); err != nil {
		klog.InfoS("warning: no spare PID namespace holder", "err", err)
		return
	}
	c.spare = cmd.Process
}

// adoptSpare makes the spare holder the pod's, if it still runs. c.mu is
// held.
func (c *containers) adoptSpare() bool {
	p := c.spare
	c.spare = nil
	// The reaper may have reaped it: the signal goes through the process's
	// pidfd, so a reused PID is not mistaken for it.
	if p == nil || p.Signal(syscall.Signal(0)) != nil {
		return false
	}
	c.holderPID, c.sharePID = p.Pid, true
	return true
}

func isSameFS(a, b string) bool {
	var sa, sb unix.Stat_t
	return unix.Stat(a, &sa) == nil && unix.Stat(b, &sb) == nil && sa.Dev == sb.Dev
}

func writeFileAtomic(name string, b []byte, mode os.FileMode) error {
	tmp := name + ".tmp"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return err
	}
	return os.Rename(tmp, name)
}

// pause is PID 1 of the pod's shared PID namespace: it reaps what is
// reparented to it and otherwise sleeps.
func pause() {
	ch := make(chan os.Signal, 8)
	signal.Notify(ch, unix.SIGCHLD, unix.SIGTERM, unix.SIGINT)
	for sig := range ch {
		if sig != unix.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws unix.WaitStatus
			if pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil); pid <= 0 || err != nil {
				break
			}
		}
	}
}
