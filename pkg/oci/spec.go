// Package oci turns a CRI container request and its image's configuration
// into the OCI runtime spec that runc applies inside the pod VM. It is pure:
// no I/O beyond reading a Localhost seccomp profile, so every rule here is
// unit-tested.
package oci

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"
	"syscall"

	"github.com/moby/profiles/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
)

// ociVersion is the runtime-spec version the specs declare: the guest's
// crun (1.8, Debian 12) accepts 1.0 and 1.1 only, and the specs use nothing
// newer.
const ociVersion = "1.1.0"

// ErrInvalid marks a request that cannot be turned into a spec.
var ErrInvalid = errors.New("invalid container config")

// ErrUnsupported marks a request hyperlet cannot honour inside a VM.
var ErrUnsupported = errors.New("unsupported in a pod VM")

// ImageConfig is what the spec takes from the image.
type ImageConfig struct {
	Entrypoint []string
	Cmd        []string
	Env        []string
	WorkingDir string
	User       string
}

// Input is everything a container's spec is made from.
type Input struct {
	Config  *runtime.ContainerConfig
	Sandbox *runtime.PodSandboxConfig
	Image   ImageConfig
	// Mounts are the container's CRI mounts already mapped to guest paths.
	Mounts []specs.Mount
}

// DefaultCapabilities is the set containers get without adds or drops (the
// same as containerd's and Docker's defaults).
var DefaultCapabilities = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// allCapabilities are the capabilities of the guest kernel (Linux 6.1).
var allCapabilities = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
	"CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
	"CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
	"CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
	"CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
	"CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
	"CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
	"CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
	"CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
}

// DefaultMaskedPaths and DefaultReadonlyPaths apply when the CRI request
// names none (kubelet normally sends its own, the same lists).
var (
	DefaultMaskedPaths = []string{
		"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
		"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
		"/sys/firmware", "/sys/devices/virtual/powercap",
	}
	DefaultReadonlyPaths = []string{
		"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
	}
)

const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Spec builds the container's runtime spec. It also returns the user
// ("user[:group]") the agent resolves against the image's /etc/passwd.
func Spec(in Input) (*specs.Spec, string, error) {
	c := in.Config
	if c == nil || c.Metadata == nil || c.Metadata.Name == "" {
		return nil, "", fmt.Errorf("%w: container metadata name is required", ErrInvalid)
	}
	lc := c.GetLinux()
	sc := lc.GetSecurityContext()
	privileged := sc.GetPrivileged()
	if privileged && !in.Sandbox.GetLinux().GetSecurityContext().GetPrivileged() {
		return nil, "", fmt.Errorf("%w: privileged container in a non-privileged pod", ErrInvalid)
	}
	if sc.GetRunAsGroup() != nil && sc.GetRunAsUser() == nil && sc.GetRunAsUsername() == "" {
		return nil, "", fmt.Errorf("%w: RunAsGroup needs RunAsUser or RunAsUsername", ErrInvalid)
	}
	args, err := processArgs(c, in.Image)
	if err != nil {
		return nil, "", err
	}
	if ns := sc.GetNamespaceOptions(); ns != nil {
		if ns.Pid == runtime.NamespaceMode_NODE || ns.Ipc == runtime.NamespaceMode_NODE || ns.Network == runtime.NamespaceMode_NODE {
			return nil, "", fmt.Errorf("%w: host namespaces (NODE mode)", ErrUnsupported)
		}
		if ns.Pid == runtime.NamespaceMode_TARGET {
			return nil, "", fmt.Errorf("%w: PID namespace of a target container", ErrUnsupported)
		}
	}
	if len(c.Devices) > 0 {
		return nil, "", fmt.Errorf("%w: host devices", ErrUnsupported)
	}

	s := &specs.Spec{
		Version:  ociVersion,
		Hostname: "",
		Root:     &specs.Root{Path: "rootfs", Readonly: sc.GetReadonlyRootfs()},
		Process: &specs.Process{
			Terminal:        c.Tty,
			Args:            args,
			Env:             env(in.Image.Env, c.Envs),
			Cwd:             cwd(c.WorkingDir, in.Image.WorkingDir),
			NoNewPrivileges: sc.GetNoNewPrivs() && !privileged,
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1048576, Soft: 1048576}},
		},
		Mounts:      defaultMounts(privileged),
		Annotations: c.Annotations,
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.MountNamespace},
				{Type: specs.CgroupNamespace},
			},
			Resources: &specs.LinuxResources{},
		},
	}
	// NamespaceMode POD (also the protobuf default) joins the pod's PID
	// namespace, which the agent holds; CONTAINER gets its own.
	if sc.GetNamespaceOptions().GetPid() == runtime.NamespaceMode_POD {
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.PIDNamespace, Path: "pod"})
	} else {
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.PIDNamespace})
	}
	if PodUserns(in.Sandbox) {
		// The pod's user namespace, and the IPC namespace it owns, held by
		// the agent; containers share the VM's network namespace, which
		// the pod's user namespace does not own, so /sys is bound, not
		// mounted.
		s.Linux.Namespaces = append(s.Linux.Namespaces,
			specs.LinuxNamespace{Type: specs.UserNamespace, Path: "pod"},
			specs.LinuxNamespace{Type: specs.IPCNamespace, Path: "pod"})
		for i := range s.Mounts {
			if s.Mounts[i].Destination == "/sys" {
				s.Mounts[i] = specs.Mount{Destination: "/sys", Type: "bind", Source: "/sys", Options: []string{"rbind", "nosuid", "noexec", "nodev", "ro"}}
			}
		}
	}
	if u := sc.GetNamespaceOptions().GetUsernsOptions(); u != nil && (u.GetMode() == runtime.NamespaceMode_POD) != PodUserns(in.Sandbox) {
		return nil, "", fmt.Errorf("%w: container user namespace mode %v differs from its pod's", ErrInvalid, u.GetMode())
	}
	for _, g := range sc.GetSupplementalGroups() {
		s.Process.User.AdditionalGids = append(s.Process.User.AdditionalGids, uint32(g))
	}
	if r := lc.GetResources(); r != nil {
		s.Process.OOMScoreAdj = ptr(int(r.OomScoreAdj))
		s.Linux.Resources = Resources(r)
	}

	caps, err := capabilities(sc, privileged)
	if err != nil {
		return nil, "", err
	}
	s.Process.Capabilities = &specs.LinuxCapabilities{
		Bounding: caps, Effective: caps, Permitted: caps,
	}
	if privileged {
		// Every device of the guest: its /dev, and a cgroup that allows all.
		// /dev must stay first of the /dev mounts: replaced in place.
		for i := range s.Mounts {
			if s.Mounts[i].Destination == "/dev" {
				s.Mounts[i] = specs.Mount{Destination: "/dev", Type: "bind", Source: "/dev", Options: []string{"rbind", "nosuid"}}
			}
		}
		s.Linux.Resources.Devices = []specs.LinuxDeviceCgroup{{Allow: true, Access: "rwm"}}
	} else {
		s.Linux.MaskedPaths = orDefault(sc.GetMaskedPaths(), DefaultMaskedPaths)
		s.Linux.ReadonlyPaths = orDefault(sc.GetReadonlyPaths(), DefaultReadonlyPaths)
		s.Linux.Resources.Devices = []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}}
	}

	for _, m := range in.Mounts {
		s.Mounts = replaceMount(s.Mounts, m)
	}
	if !privileged {
		if s.Linux.Seccomp, err = seccompProfile(sc.GetSeccomp(), s); err != nil {
			return nil, "", err
		}
	}
	return s, userSpec(sc, in.Image.User), nil
}

// PodUserns reports whether a pod asks for its own user namespace
// (hostUsers: false). NamespaceMode's zero value is POD, so only options
// that are present count.
func PodUserns(cfg *runtime.PodSandboxConfig) bool {
	u := cfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetUsernsOptions()
	return u != nil && u.GetMode() == runtime.NamespaceMode_POD
}

// processArgs follows kubelet's rules: command replaces the image's
// entrypoint, args replace its cmd.
func processArgs(c *runtime.ContainerConfig, img ImageConfig) ([]string, error) {
	var args []string
	switch {
	case len(c.Command) > 0:
		args = append(append(args, c.Command...), c.Args...)
	case len(c.Args) > 0:
		args = append(append(args, img.Entrypoint...), c.Args...)
	default:
		args = append(append(args, img.Entrypoint...), img.Cmd...)
	}
	if len(args) == 0 {
		return nil, fmt.Errorf("%w: no command: neither the request nor the image specifies one", ErrInvalid)
	}
	return args, nil
}

func env(image []string, kvs []*runtime.KeyValue) []string {
	out := []string{}
	idx := map[string]int{}
	set := func(kv string) {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := idx[k]; ok {
			out[i] = kv
			return
		}
		idx[k] = len(out)
		out = append(out, kv)
	}
	set(defaultPath)
	for _, e := range image {
		set(e)
	}
	for _, kv := range kvs {
		if kv.Key != "" {
			set(kv.Key + "=" + string(kv.Value))
		}
	}
	return out
}

func cwd(req, image string) string {
	switch {
	case req != "":
		return req
	case image != "":
		return image
	}
	return "/"
}

// userSpec is the user the container runs as: the request's UID or name,
// else the image's user; the request's group overrides.
func userSpec(sc *runtime.LinuxContainerSecurityContext, image string) string {
	u := image
	switch {
	case sc.GetRunAsUser() != nil:
		u = strconv.FormatInt(sc.GetRunAsUser().Value, 10)
	case sc.GetRunAsUsername() != "":
		u = sc.GetRunAsUsername()
	}
	if g := sc.GetRunAsGroup(); g != nil {
		name, _, _ := strings.Cut(u, ":")
		if name == "" {
			name = "0"
		}
		u = name + ":" + strconv.FormatInt(g.Value, 10)
	}
	return u
}

func capabilities(sc *runtime.LinuxContainerSecurityContext, privileged bool) ([]string, error) {
	if privileged {
		return append([]string(nil), allCapabilities...), nil
	}
	set := map[string]bool{}
	for _, c := range DefaultCapabilities {
		set[c] = true
	}
	norm := func(c string) (string, error) {
		c = strings.ToUpper(c)
		if !strings.HasPrefix(c, "CAP_") {
			c = "CAP_" + c
		}
		for _, k := range allCapabilities {
			if k == c {
				return c, nil
			}
		}
		return "", fmt.Errorf("%w: unknown capability %q", ErrInvalid, c)
	}
	caps := sc.GetCapabilities()
	for _, c := range caps.GetAddCapabilities() {
		if strings.EqualFold(c, "ALL") {
			for _, k := range allCapabilities {
				set[k] = true
			}
			continue
		}
		n, err := norm(c)
		if err != nil {
			return nil, err
		}
		set[n] = true
	}
	for _, c := range caps.GetDropCapabilities() {
		if strings.EqualFold(c, "ALL") {
			set = map[string]bool{}
			continue
		}
		n, err := norm(c)
		if err != nil {
			return nil, err
		}
		delete(set, n)
	}
	// Adds named after a drop of ALL survive it, as in containerd.
	for _, c := range caps.GetAddCapabilities() {
		if n, err := norm(c); err == nil {
			set[n] = true
		}
	}
	out := []string{}
	for _, k := range allCapabilities {
		if set[k] {
			out = append(out, k)
		}
	}
	return out, nil
}

func defaultMounts(privileged bool) []specs.Mount {
	ro := "ro"
	if privileged {
		ro = "rw"
	}
	return []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", ro}},
		{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", ro}},
		{Destination: "/dev/shm", Type: "bind", Source: agentapi.PodShmDir, Options: []string{"rbind", "nosuid", "nodev", "noexec"}},
		{Destination: "/etc/hosts", Type: "bind", Source: agentapi.PodHostsFile, Options: []string{"rbind", "ro"}},
		{Destination: "/etc/resolv.conf", Type: "bind", Source: agentapi.PodResolvConf, Options: []string{"rbind", "ro"}},
		{Destination: "/etc/hostname", Type: "bind", Source: agentapi.PodHostnameFile, Options: []string{"rbind", "ro"}},
	}
}

// replaceMount adds m, replacing a default mount at the same destination.
func replaceMount(ms []specs.Mount, m specs.Mount) []specs.Mount {
	dst := path.Clean(m.Destination)
	out := ms[:0]
	for _, x := range ms {
		if path.Clean(x.Destination) != dst {
			out = append(out, x)
		}
	}
	return append(out, m)
}

func orDefault(v, def []string) []string {
	if v != nil {
		return v
	}
	return append([]string(nil), def...)
}

// seccompProfile maps the CRI profile: RuntimeDefault is the
// Docker/containerd default profile; Unconfined, or no request at all (as in
// containerd), is none; Localhost is a JSON profile on the node.
func seccompProfile(p *runtime.SecurityProfile, s *specs.Spec) (*specs.LinuxSeccomp, error) {
	if p == nil {
		return nil, nil
	}
	switch p.GetProfileType() {
	case runtime.SecurityProfile_Unconfined:
		return nil, nil
	case runtime.SecurityProfile_RuntimeDefault:
		sp, err := seccomp.GetDefaultProfile(s)
		if err != nil {
			return nil, fmt.Errorf("default seccomp profile: %w", err)
		}
		return sp, nil
	case runtime.SecurityProfile_Localhost:
		ref := p.GetLocalhostRef()
		if !path.IsAbs(ref) {
			return nil, fmt.Errorf("%w: seccomp localhost profile %q is not an absolute path", ErrInvalid, ref)
		}
		b, err := readProfile(ref)
		if err != nil {
			return nil, fmt.Errorf("%w: seccomp profile: %v", ErrInvalid, err)
		}
		sp, err := seccomp.LoadProfile(string(b), s)
		if err != nil {
			return nil, fmt.Errorf("%w: seccomp profile %s: %v", ErrInvalid, ref, err)
		}
		return sp, nil
	}
	return nil, fmt.Errorf("%w: seccomp profile type %v", ErrInvalid, p.GetProfileType())
}

// MaxSeccompProfileBytes bounds a Localhost seccomp profile (Docker's
// default profile is about 20 KiB).
const MaxSeccompProfileBytes = 1 << 20

// readProfile reads a regular file of at most MaxSeccompProfileBytes.
func readProfile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if st.Size() > MaxSeccompProfileBytes {
		return nil, fmt.Errorf("%s is %d bytes, more than the %d allowed", path, st.Size(), MaxSeccompProfileBytes)
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxSeccompProfileBytes+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxSeccompProfileBytes {
		return nil, fmt.Errorf("%s grew past %d bytes", path, MaxSeccompProfileBytes)
	}
	return b, nil
}

// Resources maps CRI resources to OCI cgroup limits.
func Resources(r *runtime.LinuxContainerResources) *specs.LinuxResources {
	out := &specs.LinuxResources{}
	if r == nil {
		return out
	}
	cpu := &specs.LinuxCPU{Cpus: r.CpusetCpus, Mems: r.CpusetMems}
	if r.CpuShares > 0 {
		cpu.Shares = ptr(uint64(r.CpuShares))
	}
	if r.CpuQuota > 0 {
		cpu.Quota = ptr(r.CpuQuota)
	}
	if r.CpuPeriod > 0 {
		cpu.Period = ptr(uint64(r.CpuPeriod))
	}
	out.CPU = cpu
	if r.MemoryLimitInBytes > 0 {
		out.Memory = &specs.LinuxMemory{Limit: ptr(r.MemoryLimitInBytes)}
		if r.MemorySwapLimitInBytes > 0 {
			out.Memory.Swap = ptr(r.MemorySwapLimitInBytes)
		}
	}
	if len(r.Unified) > 0 {
		out.Unified = r.Unified
	}
	return out
}

func ptr[T any](v T) *T { return &v }
