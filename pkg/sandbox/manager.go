package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"k8s.io/klog/v2"

	"github.com/hyperlet/hyperlet/pkg/imageservice"
	"github.com/hyperlet/hyperlet/pkg/template"
	"github.com/hyperlet/hyperlet/pkg/vm"
)

// Images is what pods need from the image service.
type Images interface {
	Get(ref string) (*imageservice.Image, error)
	ConfigFile(img *imageservice.Image) (*v1.ConfigFile, error)
	// Disk returns the image's read-only filesystem image, built once.
	Disk(ctx context.Context, id string) (string, error)
	// Acquire pins an image while a container uses it.
	Acquire(id string) (release func(), err error)
}

// Config is how the Manager makes pod VMs.
type Config struct {
	// Root holds persistent records (the database); pod files go under
	// Root/pods/<id>.
	Root string
	// VM returns the base VM configuration of a pod (kernel, initrd, base
	// size, directory); the Manager sizes it for the pod.
	VM func(id string) vm.Config
	// Accel returns the resolved accelerator.
	Accel func(ctx context.Context) (vm.Accel, error)
	// Network attaches pods to the pod network; RunPodSandbox fails
	// without one, as kubelet expects of a runtime whose network is not ready.
	Network Network
	// SharedRoot holds each pod's shared directory (volumes, over 9p).
	SharedRoot string
	// MaxVCPUs and MaxMemoryMiB bound a pod VM's size.
	MaxVCPUs, MaxMemoryMiB int
	// Templates, if set, lets pod VMs resume from VM templates instead of
	// booting; a missing template is built in the background.
	Templates *template.Store
	// PoolSize is how many warm VMs of the base size are kept ready.
	PoolSize int
	// MaxParallelPodStarts and MaxParallelContainerStarts bound the pod
	// VM starts (warm VMs included) and the container starts in flight;
	// the rest queue (0: no bound).
	MaxParallelPodStarts, MaxParallelContainerStarts int
	// Hooks are NRI's (nil: none).
	Hooks Hooks
	// ObserveVMStart, if set, is told how long each VM took to boot or
	// resume from a template, agent ready (for metrics).
	ObserveVMStart func(boot string, d time.Duration)
	// ObservePhase, if set, is told how long each step of a pod or
	// container start took (for metrics).
	ObservePhase func(call, phase string, d time.Duration)
}

// Manager owns every pod VM and container on the node: their records
// (persisted), their VMs and agent connections, and the goroutines that
// watch running containers and write their logs.
type Manager struct {
	cfg    Config
	hv     vm.Hypervisor
	images Images
	db     *store
	events events
	pool   *pool
	// podStarts and ctrStarts queue starts beyond the configured bounds.
	podStarts, ctrStarts *gate
	hooks                Hooks

	mu   sync.Mutex
	pods map[string]*Pod
	ctrs map[string]*Container
	// names reserves pod and container names (kubelet's uniqueness rule).
	names map[string]string
}

// New opens the Manager's records and takes over the pods a previous daemon
// left running.
func New(ctx context.Context, cfg Config, hv vm.Hypervisor, images Images) (*Manager, error) {
	if err := os.MkdirAll(filepath.Join(cfg.Root, "pods"), 0o711); err != nil {
		return nil, err
	}
	db, err := openStore(cfg.Root)
	if err != nil {
		return nil, err
	}
	m := &Manager{cfg: cfg, hv: hv, images: images, db: db,
		pods: map[string]*Pod{}, ctrs: map[string]*Container{}, names: map[string]string{},
		podStarts: newGate("pod start", cfg.MaxParallelPodStarts), ctrStarts: newGate("container start", cfg.MaxParallelContainerStarts),
		hooks: cfg.Hooks}
	if m.hooks == nil {
		m.hooks = noHooks{}
	}
	if err := m.recover(ctx); err != nil {
		db.close()
		return nil, err
	}
	if err := m.recoverPool(ctx); err != nil {
		db.close()
		return nil, err
	}
	m.sweep(ctx)
	m.pool = newPool(m, cfg.PoolSize)
	if cfg.Templates != nil && cfg.PoolSize == 0 {
		// The pool builds the base template first; without a pool, build
		// it now so the first pods are clones too.
		go func() {
			base, err := m.baseVM(context.Background(), "template")
			if err == nil {
				_, err = cfg.Templates.Ensure(context.Background(), base)
			}
			if err != nil {
				klog.ErrorS(err, "build the base VM template")
			}
		}()
	}
	m.pool.refill()
	return m, nil
}

// baseVM is the configuration of a pod VM of the base size, with a NIC
// (its tap still missing) and a shared directory.
func (m *Manager) baseVM(ctx context.Context, id string) (vm.Config, error) {
	accel, err := m.cfg.Accel(ctx)
	if err != nil {
		return vm.Config{}, err
	}
	cfg := m.cfg.VM(id)
	cfg.Accel = accel
	cfg.SharedDir = filepath.Join(m.cfg.SharedRoot, id)
	cfg.Net = &vm.NetDevice{MAC: vm.RandomMAC()}
	return cfg, nil
}

// Close stops the warm VMs and releases the database. Pod VMs keep
// running: a restarted daemon takes them over.
func (m *Manager) Close() error {
	m.pool.close()
	return m.db.close()
}

// VMStatus reports the VM templates and the warm pool.
type VMStatus struct {
	Templates []*template.Template `json:"templates"`
	// TemplateBytes is how much of the templates' RAM files is in memory.
	TemplateBytes int64 `json:"templateBytes"`
	// TemplateBuilds and TemplateBuildFailures count builds since the
	// daemon started.
	TemplateBuilds        int        `json:"templateBuilds"`
	TemplateBuildFailures int        `json:"templateBuildFailures"`
	Pool                  PoolStatus `json:"pool"`
	// PodStarts and ContainerStarts are the start queues.
	PodStarts       GateStatus `json:"podStarts"`
	ContainerStarts GateStatus `json:"containerStarts"`
}

// VMStatus reports the VM templates and the warm pool.
func (m *Manager) VMStatus() VMStatus {
	st := VMStatus{Pool: m.pool.status(), PodStarts: m.podStarts.status(), ContainerStarts: m.ctrStarts.status()}
	if ts := m.cfg.Templates; ts != nil {
		st.Templates = ts.Templates()
		st.TemplateBytes = template.ResidentBytes(st.Templates)
		st.TemplateBuilds, st.TemplateBuildFailures = ts.Builds()
	}
	return st
}

func newID() string {
	b := make([]byte, 32)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Pod returns a pod by ID or unique ID prefix.
func (m *Manager) Pod(id string) (*Pod, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return lookup(m.pods, id, "pod")
}

// Container returns a container by ID or unique ID prefix.
func (m *Manager) Container(id string) (*Container, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return lookup(m.ctrs, id, "container")
}

func lookup[T any](all map[string]*T, id, kind string) (*T, error) {
	if id == "" {
		return nil, fmt.Errorf("%w: empty %s ID", ErrInvalid, kind)
	}
	if v, ok := all[id]; ok {
		return v, nil
	}
	var found *T
	for k, v := range all {
		if strings.HasPrefix(k, id) {
			if found != nil {
				return nil, fmt.Errorf("%w: %s ID prefix %q is ambiguous", ErrInvalid, kind, id)
			}
			found = v
		}
	}
	if found == nil {
		return nil, fmt.Errorf("%s %q: %w", kind, id, ErrNotFound)
	}
	return found, nil
}

// Pods lists every pod, oldest first.
func (m *Manager) Pods() []*Pod {
	m.mu.Lock()
	defer m.mu.Unlock()
	return oldestFirst(m.pods, func(p *Pod) int64 { return p.rec.CreatedAt })
}

// Containers lists every container, oldest first.
func (m *Manager) Containers() []*Container {
	m.mu.Lock()
	defer m.mu.Unlock()
	return oldestFirst(m.ctrs, func(c *Container) int64 { return c.rec.CreatedAt })
}

func oldestFirst[T any](all map[string]*T, created func(*T) int64) []*T {
	out := make([]*T, 0, len(all))
	for _, v := range all {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return created(out[i]) < created(out[j]) })
	return out
}

func (m *Manager) reserveName(name, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if other, ok := m.names[name]; ok && other != id {
		return fmt.Errorf("name %q is reserved for %s: %w", name, other, ErrAlreadyExists)
	}
	m.names[name] = id
	return nil
}

func (m *Manager) releaseName(name, id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.names[name] == id {
		delete(m.names, name)
	}
}
