// Package config loads hyperlet's configuration file (TOML). A missing file
// means all defaults; unknown keys are errors, so typos do not pass silently.
package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/hyperlet/hyperlet/pkg/vm"
)

// Default locations (the daemon's flags override them).
const (
	DefaultConfigFile = "/etc/hyperlet/config.toml"
	DefaultSocket     = "/run/hyperlet/hyperlet.sock"
	DefaultRoot       = "/var/lib/hyperlet"
	DefaultState      = "/run/hyperlet"
	DefaultShareDir   = "/opt/hyperlet/share"
)

// Config is the whole file.
type Config struct {
	VM  VM  `toml:"vm"`
	CNI CNI `toml:"cni"`
	// StreamAddress is where the streaming server (exec, attach,
	// port-forward) listens; port 0 picks a free one.
	StreamAddress string `toml:"stream_address"`
	// MetricsAddress is where Prometheus metrics are served (/metrics);
	// "" turns them off. Keep it on loopback or a scrape network: the
	// metrics name every pod.
	MetricsAddress string `toml:"metrics_address"`
	// UsageRetention is how long the usage record of a pod VM that ended
	// is kept (0: forever).
	UsageRetention time.Duration `toml:"usage_retention"`
	Registry       Registry      `toml:"registry"`
	Jail           Jail          `toml:"jail"`
	HostRuntime    HostRuntime   `toml:"host_runtime"`
	NRI            NRI           `toml:"nri"`
}

// NRI lets Node Resource Interface plugins hook into pod and container
// lifecycle (pkg/nri). It is off unless enabled: a plugin sees every pod
// and may change every container's spec.
type NRI struct {
	Enabled bool `toml:"enabled"`
	// SocketPath is where plugins connect (root only, mode 0600).
	SocketPath string `toml:"socket_path"`
	// PluginPath holds plugins hyperlet starts itself ("NN-name"
	// executables), PluginConfigPath their configuration.
	PluginPath       string `toml:"plugin_path"`
	PluginConfigPath string `toml:"plugin_config_path"`
	// RegistrationTimeout bounds a plugin's registration, RequestTimeout
	// each of its hooks (a hook that overruns fails its step).
	RegistrationTimeout time.Duration `toml:"registration_timeout"`
	RequestTimeout      time.Duration `toml:"request_timeout"`
}

// HostRuntime runs the pods a VM cannot hold (host network, PID or IPC
// namespaces) and pods of the host handlers as containers on the host, by
// containerd's CRI (pkg/hostruntime).
type HostRuntime struct {
	// Enabled off refuses such pods (a strictly multi-tenant node).
	Enabled bool `toml:"enabled"`
	// Endpoint is containerd's CRI socket.
	Endpoint string `toml:"endpoint"`
	// Handlers are RuntimeClass handlers whose pods run on the host.
	Handlers []string `toml:"handlers"`
}

// Jail confines each VM's QEMU (docs/security.md).
type Jail struct {
	// UIDBase is the first host uid and gid of VM id ranges; each VM runs
	// as its own range of 65536 ids, up to MaxVMs of them.
	UIDBase uint32 `toml:"uid_base"`
	MaxVMs  int    `toml:"max_vms"`
	// CgroupParent holds the cgroups of VMs no pod names one for (warm
	// VMs, template builds).
	CgroupParent string `toml:"cgroup_parent"`
	// MemoryOverheadMiB is added to a VM's RAM for its cgroup memory limit.
	MemoryOverheadMiB int `toml:"memory_overhead_mib"`
	// Pids is each VM cgroup's pids limit; NoFile QEMU's RLIMIT_NOFILE.
	Pids   int64  `toml:"pids"`
	NoFile uint64 `toml:"nofile"`
	// ConsoleLimitBytes caps each VM's console log.
	ConsoleLimitBytes int64 `toml:"console_limit_bytes"`
}

// CNI locates the pod network configuration and plugins.
type CNI struct {
	// ConfDir holds the network configuration; the first file by name
	// (.conflist, .conf or .json) is used.
	ConfDir string `toml:"conf_dir"`
	// BinDirs are searched for plugins.
	BinDirs []string `toml:"bin_dirs"`
}

// Registry configures image pulls, with the syntax of containerd's CRI
// plugin: [registry.mirrors."HOST"] endpoint = [...], and
// [registry.configs."HOST".tls] / [registry.configs."HOST".auth].
type Registry struct {
	Mirrors map[string]Mirror       `toml:"mirrors"`
	Configs map[string]RegistryHost `toml:"configs"`
}

// Mirror lists endpoints (URLs, http:// for plain HTTP) tried in order for
// a registry host before the host itself.
type Mirror struct {
	Endpoints []string `toml:"endpoint"`
}

// RegistryHost configures TLS and credentials for one host (a registry or a
// mirror endpoint's host:port).
type RegistryHost struct {
	TLS  *RegistryTLS  `toml:"tls"`
	Auth *RegistryAuth `toml:"auth"`
}

// RegistryTLS configures TLS for a host.
type RegistryTLS struct {
	InsecureSkipVerify bool   `toml:"insecure_skip_verify"`
	CAFile             string `toml:"ca_file"`
	CertFile           string `toml:"cert_file"`
	KeyFile            string `toml:"key_file"`
}

// RegistryAuth holds credentials for a host, used when the CRI caller sends
// none.
type RegistryAuth struct {
	Username      string `toml:"username"`
	Password      string `toml:"password"`
	Auth          string `toml:"auth"`
	IdentityToken string `toml:"identitytoken"`
}

// VM configures pod VMs.
type VM struct {
	// QEMU is the qemu-system-x86_64 binary.
	QEMU string `toml:"qemu"`
	// Kernel and Initrd are the guest kernel (uncompressed vmlinux) and the
	// agent initramfs.
	Kernel string `toml:"kernel"`
	Initrd string `toml:"initrd"`
	// Accel is auto, kvm or tcg.
	Accel string `toml:"accel"`
	// VCPUs and MemoryMiB size a pod VM.
	VCPUs     int `toml:"vcpus"`
	MemoryMiB int `toml:"memory_mib"`
	// MaxMemoryMiB caps a pod VM sized up for its pod's limits (0: no cap).
	MaxMemoryMiB int `toml:"max_memory_mib"`
	// TCGCacheMiB bounds TCG's translation cache per VM (host memory, all
	// of it resident once full). A warm-pool pod start needs ~40 MiB; 16
	// retranslates (~25 % slower first container start, 2x the second)
	// and saves 16-24 MiB per VM (docs/performance.md).
	TCGCacheMiB int `toml:"tcg_cache_mib"`
	// KernelArgs are appended to the guest kernel command line.
	KernelArgs []string `toml:"kernel_args"`
	// Templates lets pod VMs resume from VM templates (booted once per
	// kernel, initrd and VM size) instead of booting.
	Templates bool `toml:"templates"`
	// TemplateDir holds the templates' RAM files: it should be a tmpfs.
	TemplateDir string `toml:"template_dir"`
	// MaxTemplates bounds the templates kept (one per VM shape); the least
	// recently used is evicted for a new one.
	MaxTemplates int `toml:"max_templates"`
	// PoolSize is how many warm VMs of the base size are kept ready for
	// new pods (0 turns the pool off).
	PoolSize int `toml:"pool_size"`
	// MaxParallelStarts and MaxParallelContainerStarts bound the pod VM
	// starts and the container starts in flight; more queue. 0 means the
	// host's CPU count (Load resolves it), -1 no bound.
	MaxParallelStarts          int `toml:"max_parallel_starts"`
	MaxParallelContainerStarts int `toml:"max_parallel_container_starts"`
	// Handlers are RuntimeClass handler names for pod VMs, besides the
	// default (empty) handler. A pod asking for a handler that is neither
	// one of these nor a host handler is refused.
	Handlers []string `toml:"handlers"`
}

// Default returns the configuration used where the file is silent.
func Default() Config {
	return Config{StreamAddress: "127.0.0.1:0", UsageRetention: 90 * 24 * time.Hour, CNI: CNI{
		ConfDir: "/etc/cni/net.d",
		BinDirs: []string{"/opt/cni/bin", "/usr/lib/cni"},
	}, VM: VM{
		QEMU:         "qemu-system-x86_64",
		Kernel:       filepath.Join(DefaultShareDir, "vmlinux"),
		Initrd:       filepath.Join(DefaultShareDir, "initrd.img"),
		Accel:        string(vm.AccelAuto),
		VCPUs:        1,
		MemoryMiB:    256,
		TCGCacheMiB:  16,
		Templates:    true,
		TemplateDir:  "/dev/shm/hyperlet/templates",
		MaxTemplates: 8,
		PoolSize:     1,
		Handlers:     []string{"hyperlet"},
	}, Jail: Jail{
		UIDBase: 2_000_000_000, MaxVMs: 1024, CgroupParent: "hyperlet",
		MemoryOverheadMiB: 256, Pids: 512, NoFile: 4096, ConsoleLimitBytes: 1 << 20,
	}, HostRuntime: HostRuntime{
		Enabled: true, Endpoint: "/run/containerd/containerd.sock", Handlers: []string{"runc"},
	}, NRI: NRI{
		SocketPath: "/var/run/nri/nri.sock", PluginPath: "/opt/nri/plugins", PluginConfigPath: "/etc/nri/conf.d",
		RegistrationTimeout: 5 * time.Second, RequestTimeout: 2 * time.Second,
	}}
}

// Load reads path over the defaults. A missing file is not an error.
func Load(path string) (Config, error) {
	cfg := Default()
	md, err := toml.DecodeFile(path, &cfg)
	if errors.Is(err, fs.ErrNotExist) {
		cfg.resolve()
		return cfg, nil
	}
	if err != nil {
		return cfg, fmt.Errorf("config %s: %w", path, err)
	}
	if undec := md.Undecoded(); len(undec) > 0 {
		return cfg, fmt.Errorf("config %s: unknown keys %v", path, undec)
	}
	if err := cfg.Validate(); err != nil {
		return cfg, err
	}
	cfg.resolve()
	return cfg, nil
}

// resolve fills the values that default from the host.
func (c *Config) resolve() {
	for _, n := range []*int{&c.VM.MaxParallelStarts, &c.VM.MaxParallelContainerStarts} {
		if *n == 0 {
			*n = goruntime.NumCPU()
		}
	}
}

// Validate checks values the daemon cannot start with.
func (c Config) Validate() error {
	if _, err := vm.ParseAccel(c.VM.Accel); err != nil {
		return fmt.Errorf("vm.accel: %w", err)
	}
	if c.VM.VCPUs < 1 || c.VM.VCPUs > 64 {
		return fmt.Errorf("vm.vcpus: %d out of range 1-64", c.VM.VCPUs)
	}
	if c.VM.MemoryMiB < 64 {
		return fmt.Errorf("vm.memory_mib: %d is below 64", c.VM.MemoryMiB)
	}
	if c.VM.MaxParallelStarts < -1 || c.VM.MaxParallelContainerStarts < -1 {
		return errors.New("vm.max_parallel_starts and vm.max_parallel_container_starts: -1 (no bound), 0 (the CPU count) or a count")
	}
	if c.VM.PoolSize < 0 || c.VM.PoolSize > 64 {
		return fmt.Errorf("vm.pool_size: %d out of range 0-64", c.VM.PoolSize)
	}
	if c.VM.Templates && c.VM.TemplateDir == "" {
		return errors.New("vm.template_dir must be set when vm.templates is on")
	}
	if c.VM.Kernel == "" || c.VM.Initrd == "" {
		return errors.New("vm.kernel and vm.initrd must be set")
	}
	if c.Jail.UIDBase < 65536 || c.Jail.MaxVMs < 1 || uint64(c.Jail.UIDBase)+uint64(c.Jail.MaxVMs)*65536 >= 1<<32-1 {
		return fmt.Errorf("jail.uid_base %d and jail.max_vms %d: the id ranges must lie within 65536..2^32-2", c.Jail.UIDBase, c.Jail.MaxVMs)
	}
	for _, h := range c.VM.Handlers {
		if errs := validation.IsDNS1123Label(h); len(errs) > 0 {
			return fmt.Errorf("vm.handlers: %q: %s", h, strings.Join(errs, "; "))
		}
		if c.HostRuntime.Enabled && slices.Contains(c.HostRuntime.Handlers, h) {
			return fmt.Errorf("vm.handlers: %q is also a host_runtime handler", h)
		}
	}
	if c.HostRuntime.Enabled && c.HostRuntime.Endpoint == "" {
		return errors.New("host_runtime.endpoint must be set when host_runtime.enabled is on")
	}
	if c.Jail.ConsoleLimitBytes < 4096 {
		return fmt.Errorf("jail.console_limit_bytes: %d is below 4096", c.Jail.ConsoleLimitBytes)
	}
	if c.NRI.Enabled {
		if !filepath.IsAbs(c.NRI.SocketPath) {
			return fmt.Errorf("nri.socket_path: %q is not absolute", c.NRI.SocketPath)
		}
		if c.NRI.RequestTimeout <= 0 || c.NRI.RegistrationTimeout <= 0 {
			return errors.New("nri.request_timeout and nri.registration_timeout must be positive")
		}
	}
	return nil
}

// Exists reports whether a config file is present (for logging).
func Exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
