package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"k8s.io/klog/v2"

	"k8s.io/cri-streaming/pkg/streaming"

	"github.com/hyperlet/hyperlet/pkg/admin"
	"github.com/hyperlet/hyperlet/pkg/cni"
	"github.com/hyperlet/hyperlet/pkg/config"
	"github.com/hyperlet/hyperlet/pkg/cri"
	"github.com/hyperlet/hyperlet/pkg/hostruntime"
	"github.com/hyperlet/hyperlet/pkg/imageservice"
	"github.com/hyperlet/hyperlet/pkg/jail"
	"github.com/hyperlet/hyperlet/pkg/metrics"
	"github.com/hyperlet/hyperlet/pkg/nri"
	"github.com/hyperlet/hyperlet/pkg/sandbox"
	"github.com/hyperlet/hyperlet/pkg/template"
	"github.com/hyperlet/hyperlet/pkg/usage"
	"github.com/hyperlet/hyperlet/pkg/vm"
	"github.com/hyperlet/hyperlet/pkg/vm/qemu"
)

// env is what every subcommand sets up: configuration, directories, the VM
// driver.
type env struct {
	cfg    config.Config
	o      options
	driver *qemu.Driver
	lock   *os.File
}

func setup(o options) (*env, error) {
	cfg, err := config.Load(o.config)
	if err != nil {
		return nil, err
	}
	for _, d := range []string{o.root, o.state, filepath.Join(o.state, "vms")} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return nil, fmt.Errorf("create %s: %w", d, err)
		}
	}
	ids, err := jail.NewAllocator(cfg.Jail.UIDBase, cfg.Jail.MaxVMs)
	if err != nil {
		return nil, err
	}
	return &env{cfg: cfg, o: o, driver: &qemu.Driver{Binary: cfg.VM.QEMU, TCGCacheMiB: cfg.VM.TCGCacheMiB, Jail: qemu.JailOptions{
		IDs: ids, CgroupParent: cfg.Jail.CgroupParent, MemoryOverheadMiB: cfg.Jail.MemoryOverheadMiB,
		Pids: cfg.Jail.Pids, NoFile: cfg.Jail.NoFile, ConsoleLimit: cfg.Jail.ConsoleLimitBytes,
	}}}, nil
}

// lockRoot makes sure one daemon owns root and state.
func (e *env) lockRoot() error {
	f, err := os.OpenFile(filepath.Join(e.o.root, "hyperlet.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return fmt.Errorf("%s is in use by another hyperlet: %w", e.o.root, err)
	}
	e.lock = f
	return nil
}

// vmConfig is a pod VM's configuration from the config file.
func (e *env) vmConfig(id string) vm.Config {
	dir := filepath.Join(e.o.state, "vms", id)
	return vm.Config{
		ID:         id,
		Dir:        dir,
		ConsoleLog: dir + ".console",
		Kernel:     e.cfg.VM.Kernel,
		Initrd:     e.cfg.VM.Initrd,
		KernelArgs: e.cfg.VM.KernelArgs,
		VCPUs:      e.cfg.VM.VCPUs,
		MemoryMiB:  e.cfg.VM.MemoryMiB,
	}
}

// openTemplates opens the VM template store. Its inputs are the guest
// image, QEMU and this binary, which decides the VM's device set.
func (e *env) openTemplates(ctx context.Context) (*template.Store, error) {
	qemuBin, err := exec.LookPath(e.cfg.VM.QEMU)
	if err != nil {
		return nil, fmt.Errorf("vm.qemu: %w", err)
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return template.Open(ctx, e.driver, template.Options{
		Dir:   e.cfg.VM.TemplateDir,
		Files: []string{e.cfg.VM.Kernel, e.cfg.VM.Initrd, qemuBin, self},
		Extra: fmt.Sprintf("tcg-cache=%d", e.cfg.VM.TCGCacheMiB),
		Ready: sandbox.AgentReady,
		VMDir: func(id string) string { return e.vmConfig(id).Dir },
		// One build at a time: each boots a VM.
		MaxTemplates: e.cfg.VM.MaxTemplates, MaxBuilds: 1,
	})
}

// resolveAccel picks the accelerator (probing once per machine boot: the
// result is cached in the state directory) and logs the choice.
func (e *env) resolveAccel(ctx context.Context) (vm.Accel, error) {
	want, _ := vm.ParseAccel(e.cfg.VM.Accel)
	for _, f := range []string{e.cfg.VM.Kernel, e.cfg.VM.Initrd} {
		if _, err := os.Stat(f); err != nil {
			return "", fmt.Errorf("guest image: %w", err)
		}
	}
	p, err := e.driver.ResolveAccel(ctx, want, e.vmConfig("probe"), sandbox.AgentReady, filepath.Join(e.o.state, "accel-probe.json"))
	if err != nil {
		return "", err
	}
	klog.InfoS("VM accelerator chosen", "accel", p.Accel, "reason", p.Reason)
	return p.Accel, nil
}

func serve(o options) error {
	e, err := setup(o)
	if err != nil {
		return err
	}
	if err := e.lockRoot(); err != nil {
		return err
	}
	klog.InfoS("hyperlet starting", "version", version, "config", o.config, "configFound", config.Exists(o.config),
		"socket", o.socket, "root", o.root, "state", o.state)

	images, err := imageservice.New(filepath.Join(o.root, "images"), e.cfg.Registry)
	if err != nil {
		return err
	}
	defer images.Close()

	ln, err := listen(o.socket)
	if err != nil {
		return err
	}
	defer os.Remove(o.socket)

	// The accelerator probe may take seconds; the CRI answers meanwhile and
	// reports RuntimeReady=false until it is done.
	var (
		mu        sync.Mutex
		accel     vm.Accel
		accelErr  = errors.New("probing VM accelerator")
		probeDone = make(chan struct{})
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		a, err := e.resolveAccel(ctx)
		if err != nil {
			klog.ErrorS(err, "no usable VM accelerator")
		}
		mu.Lock()
		accel, accelErr = a, err
		mu.Unlock()
		close(probeDone)
	}()
	currentAccel := func() (vm.Accel, error) {
		mu.Lock()
		defer mu.Unlock()
		return accel, accelErr
	}

	var templates *template.Store
	if e.cfg.VM.Templates {
		// Templates only make pods start faster: without them (no guest
		// image yet, directory in use) pods boot.
		if templates, err = e.openTemplates(ctx); errors.Is(err, template.ErrInsecureDir) {
			// Whoever can write there controls every clone's memory.
			return fmt.Errorf("vm.template_dir: %w", err)
		} else if err != nil {
			klog.ErrorS(err, "VM templates off")
		} else {
			defer templates.Close()
		}
	}

	network := cni.New(cni.Config{ConfDir: e.cfg.CNI.ConfDir, BinDirs: e.cfg.CNI.BinDirs, CacheDir: filepath.Join(o.root, "cni-cache")})
	var (
		hooks sandbox.Hooks
		nrirt *nri.Runtime
	)
	if c := e.cfg.NRI; c.Enabled {
		if nrirt, err = nri.New(nri.Config{
			SocketPath: c.SocketPath, PluginPath: c.PluginPath, PluginConfigPath: c.PluginConfigPath,
			RegistrationTimeout: c.RegistrationTimeout, RequestTimeout: c.RequestTimeout,
		}, version); err != nil {
			return err
		}
		hooks = nrirt
	}
	// Metrics are made first: the sandbox manager reports VM starts.
	var (
		prom           *metrics.Metrics
		observeVMStart func(string, time.Duration)
		observePhase   func(string, string, time.Duration)
	)
	if e.cfg.MetricsAddress != "" {
		prom = metrics.New()
		observeVMStart, observePhase = prom.ObserveVMStart, prom.ObservePhase
	}
	// Pods left by a previous daemon are taken over before serving.
	pods, err := sandbox.New(ctx, sandbox.Config{
		ObserveVMStart: observeVMStart,
		ObservePhase:   observePhase,
		Hooks:          hooks,
		Root:           o.root,
		SharedRoot:     filepath.Join(o.state, "shared"),
		Network:        network,
		VM:             e.vmConfig,
		Accel: func(ctx context.Context) (vm.Accel, error) {
			select {
			case <-probeDone:
			case <-ctx.Done():
				return "", ctx.Err()
			}
			return currentAccel()
		},
		MaxMemoryMiB:               e.cfg.VM.MaxMemoryMiB,
		Templates:                  templates,
		PoolSize:                   e.cfg.VM.PoolSize,
		MaxParallelPodStarts:       e.cfg.VM.MaxParallelStarts,
		MaxParallelContainerStarts: e.cfg.VM.MaxParallelContainerStarts,
	}, e.driver, images)
	if err != nil {
		return err
	}
	defer pods.Close()
	if nrirt != nil {
		// Plugins connect once the pods left running are known.
		if err := nrirt.Start(pods); err != nil {
			return err
		}
		defer nrirt.Stop()
	}

	streamCfg := streaming.DefaultConfig
	streamCfg.Addr = e.cfg.StreamAddress
	streamer, err := streaming.NewServer(streamCfg, pods)
	if err != nil {
		return fmt.Errorf("streaming server: %w", err)
	}
	go func() {
		if err := streamer.Start(true); err != nil && !errors.Is(err, http.ErrServerClosed) {
			klog.ErrorS(err, "streaming server stopped")
		}
	}()
	defer streamer.Stop()

	opts := []cri.Option{cri.WithStreaming(streamer), cri.WithVersion(version), cri.WithImages(images), cri.WithRuntime(pods), cri.WithAccel(currentAccel), cri.WithNetwork(network.Ready), cri.WithLayerFS(o.state), cri.WithVMHandlers(e.cfg.VM.Handlers)}
	if hc := e.cfg.HostRuntime; hc.Enabled {
		host, err := hostruntime.Dial(hc.Endpoint, hc.Handlers)
		if err != nil {
			return err
		}
		defer host.Close()
		opts = append(opts, cri.WithHost(host))
		klog.InfoS("host runtime for host-namespace pods", "endpoint", hc.Endpoint, "handlers", hc.Handlers)
	}
	// Every pod VM's life is metered by the second, across restarts.
	meter, err := usage.Open(o.root, pods, e.cfg.UsageRetention)
	if err != nil {
		return err
	}
	defer meter.Close()
	go meter.Run(ctx, time.Second)
	go func() {
		// What the CRI has no call for: usage, pause, pull progress.
		if err := admin.Serve(ctx, filepath.Join(o.state, "admin.sock"), admin.Handler(pods, images, meter.Handler())); err != nil {
			klog.ErrorS(err, "admin endpoint stopped")
		}
	}()

	unary := []grpc.UnaryServerInterceptor{cri.LogUnary, cri.RecoverUnary}
	if addr := e.cfg.MetricsAddress; addr != "" {
		m := prom
		m.Watch(pods, images, meter, func() string {
			a, err := currentAccel()
			if err != nil {
				return ""
			}
			return string(a)
		})
		opts = append(opts, cri.WithObserver(m))
		unary = append([]grpc.UnaryServerInterceptor{m.Unary}, unary...)
		go func() {
			if err := m.Serve(ctx, addr); err != nil {
				klog.ErrorS(err, "metrics server stopped", "address", addr)
			}
		}()
	}
	svc := cri.New(opts...)
	g := grpc.NewServer(grpc.ChainUnaryInterceptor(unary...), grpc.ChainStreamInterceptor(cri.RecoverStream))
	svc.Register(g)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT)
	serveErr := make(chan error, 1)
	go func() { serveErr <- g.Serve(ln) }()
	klog.InfoS("serving CRI", "socket", o.socket)
	select {
	case sig := <-sigs:
		// Pods keep running: VMs are in their own sessions and a restarted
		// daemon reconnects to them.
		klog.InfoS("shutting down; pods keep running", "signal", sig)
		stopped := make(chan struct{})
		go func() { g.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(10 * time.Second):
			g.Stop()
		}
		return nil
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	}
}

// listen opens the CRI socket, replacing a stale one but refusing to steal
// a socket another live daemon serves.
func listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o711); err != nil {
		return nil, err
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("socket %s is served by another process", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}
