// Package testcontainerd writes the configuration of a containerd 1.6 (the
// Debian package) with its CRI plugin and runc, in directories of its own,
// for the tests and benchmarks that run one beside hyperlet: as the host
// runtime, or as the peer runtime measured against it.
package testcontainerd

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Config is one containerd's setup.
type Config struct {
	Dir          string            // root, state, sockets and runc state go here
	SandboxImage string            // the pause image
	CNIConfDir   string            // its pod network
	Mirrors      map[string]string // registry host -> mirror host:port (plain HTTP)
	// GVisorShim, when set, adds the runtime handler "runsc": gVisor's shim
	// (hack/gvisor.sh) with the runsc configuration file at GVisorConfig.
	GVisorShim, GVisorConfig string
}

// Socket is its CRI socket.
func (c Config) Socket() string { return filepath.Join(c.Dir, "containerd.sock") }

// Write writes Dir/containerd.toml and returns its path.
func (c Config) Write() (string, error) {
	runc, err := exec.LookPath("runc")
	if err != nil {
		return "", err
	}
	cri := `plugins."io.containerd.grpc.v1.cri"`
	var b strings.Builder
	fmt.Fprintf(&b, `version = 2
root = %[1]q
state = %[2]q
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[debug]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q
[%[6]s]
  sandbox_image = %[7]q
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = %[8]t
  enable_selinux = false
  [%[6]s.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [%[6]s.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [%[6]s.containerd.runtimes.runc.options]
        BinaryName = %[9]q
        Root = %[10]q
        SystemdCgroup = false
  [%[6]s.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %[11]q
    max_conf_num = 1
`, filepath.Join(c.Dir, "root"), filepath.Join(c.Dir, "state"), c.Socket(), c.Socket()+".ttrpc", filepath.Join(c.Dir, "opt"),
		cri, c.SandboxImage, !hasCapability(24), runc, filepath.Join(c.Dir, "runc"), c.CNIConfDir)
	if c.GVisorShim != "" {
		fmt.Fprintf(&b, `    [%[1]s.containerd.runtimes.runsc]
      runtime_type = %[2]q
      [%[1]s.containerd.runtimes.runsc.options]
        TypeUrl = "io.containerd.runsc.v1.options"
        ConfigPath = %[3]q
`, cri, c.GVisorShim, c.GVisorConfig)
	}
	hosts := make([]string, 0, len(c.Mirrors))
	for h := range c.Mirrors {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	for _, h := range hosts {
		fmt.Fprintf(&b, "  [%s.registry.mirrors.%q]\n    endpoint = [\"http://%s\"]\n", cri, h, c.Mirrors[h])
	}
	path := filepath.Join(c.Dir, "containerd.toml")
	return path, os.WriteFile(path, []byte(b.String()), 0o644)
}

// hasCapability reports whether capability bit n is in this process's
// bounding set: without CAP_SYS_RESOURCE (24), missing on some hosts, runc
// cannot lower oom_score_adj unless containerd restricts it.
func hasCapability(n uint) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapBnd:"); ok {
			x, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && x&(1<<n) != 0
		}
	}
	return false
}
