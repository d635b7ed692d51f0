package integration

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	api "github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// nriEvent is one lifecycle event a test plugin saw.
type nriEvent struct {
	typ, pod, podName, podUID, ctr, ctrName string
}

// nriPlugin records every event and lets a test block or fail hooks.
type nriPlugin struct {
	mu       sync.Mutex
	events   []nriEvent
	syncPods []string
	syncCtrs []string
	synced   chan struct{}
	once     sync.Once

	onSync     func(ctx context.Context) error
	onRun      func(ctx context.Context, pod *api.PodSandbox) error
	onStopPod  func(ctx context.Context, pod *api.PodSandbox) error
	onCreate   func(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, error)
	onStartCtr func(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) error
}

func (p *nriPlugin) record(typ string, pod *api.PodSandbox, ctr *api.Container) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.events = append(p.events, nriEvent{typ: typ, pod: pod.GetId(), podName: pod.GetName(), podUID: pod.GetUid(), ctr: ctr.GetId(), ctrName: ctr.GetName()})
}

// of lists the types of the events of one pod, or of one container.
func (p *nriPlugin) of(id string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, e := range p.events {
		if e.pod == id || e.ctr == id {
			out = append(out, e.typ)
		}
	}
	return out
}

func (p *nriPlugin) Synchronize(ctx context.Context, pods []*api.PodSandbox, ctrs []*api.Container) ([]*api.ContainerUpdate, error) {
	p.mu.Lock()
	p.syncPods, p.syncCtrs = nil, nil
	for _, x := range pods {
		p.syncPods = append(p.syncPods, x.GetId())
	}
	for _, x := range ctrs {
		p.syncCtrs = append(p.syncCtrs, x.GetId())
	}
	p.mu.Unlock()
	if p.onSync != nil {
		if err := p.onSync(ctx); err != nil {
			return nil, err
		}
	}
	p.once.Do(func() { close(p.synced) })
	return nil, nil
}

func (p *nriPlugin) RunPodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	p.record("RunPodSandbox", pod, nil)
	if p.onRun != nil {
		return p.onRun(ctx, pod)
	}
	return nil
}

func (p *nriPlugin) StopPodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	p.record("StopPodSandbox", pod, nil)
	if p.onStopPod != nil {
		return p.onStopPod(ctx, pod)
	}
	return nil
}

func (p *nriPlugin) RemovePodSandbox(_ context.Context, pod *api.PodSandbox) error {
	p.record("RemovePodSandbox", pod, nil)
	return nil
}

func (p *nriPlugin) CreateContainer(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	p.record("CreateContainer", pod, ctr)
	if p.onCreate != nil {
		adj, err := p.onCreate(ctx, pod, ctr)
		return adj, nil, err
	}
	return nil, nil, nil
}

func (p *nriPlugin) StartContainer(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	p.record("StartContainer", pod, ctr)
	if p.onStartCtr != nil {
		return p.onStartCtr(ctx, pod, ctr)
	}
	return nil
}

func (p *nriPlugin) StopContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) ([]*api.ContainerUpdate, error) {
	p.record("StopContainer", pod, ctr)
	return nil, nil
}

func (p *nriPlugin) RemoveContainer(_ context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	p.record("RemoveContainer", pod, ctr)
	return nil
}

// connectNRI connects a plugin to the daemon's socket and waits for its
// synchronisation; configure runs before it connects.
func connectNRI(t *testing.T, socket, name, idx string, configure func(*nriPlugin)) *nriPlugin {
	t.Helper()
	p := &nriPlugin{synced: make(chan struct{})}
	if configure != nil {
		configure(p)
	}
	s, err := stub.New(p, stub.WithPluginName(name), stub.WithPluginIdx(idx), stub.WithSocketPath(socket))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatalf("start NRI plugin %s: %v", name, err)
	}
	t.Cleanup(s.Stop)
	select {
	case <-p.synced:
	case <-time.After(30 * time.Second):
		t.Fatalf("NRI plugin %s was not synchronised", name)
	}
	return p
}

// TestCRINRI: NRI plugins see pod and container events in order with
// their metadata, adjust containers (environment, a host directory, a
// memory limit) inside the VM, hold a pod back from being listed while
// their RunPodSandbox hook runs, make a step fail with nothing left behind
// when a hook fails, and a plugin connecting late is synchronised with
// what exists and told of what is created while it synchronises.
func TestCRINRI(t *testing.T) {
	dir := t.TempDir()
	socket := filepath.Join(dir, "nri", "nri.sock")
	d := startCRI(t, "nri.enabled = true", "nri.socket_path = "+strconv.Quote(socket), "nri.plugin_path = "+strconv.Quote(filepath.Join(dir, "plugins")),
		"nri.request_timeout = \"10s\"")
	ctx := testCtx(t, 6*time.Minute)
	d.pull(ctx)
	if fi, err := os.Stat(socket); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("NRI socket %s: %v %v", socket, fi, err)
	}
	shared := filepath.Join(dir, "from-plugin")
	os.MkdirAll(shared, 0o755)
	os.WriteFile(filepath.Join(shared, "note"), []byte("injected\n"), 0o644)

	var failCreate, refuseHooks bool
	var mu sync.Mutex
	a := connectNRI(t, socket, "test-a", "00", func(p *nriPlugin) {
		p.onCreate = func(_ context.Context, _ *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, error) {
			mu.Lock()
			defer mu.Unlock()
			if failCreate {
				failCreate = false
				return nil, errors.New("induced CreateContainer failure")
			}
			adj := &api.ContainerAdjustment{}
			if refuseHooks {
				refuseHooks = false
				adj.AddHooks(&api.Hooks{Prestart: []*api.Hook{{Path: "/bin/true"}}})
				return adj, nil
			}
			if ctr.GetName() == "adjusted" {
				adj.AddEnv("FROM_NRI", "yes")
				adj.AddMount(&api.Mount{Destination: "/nri", Source: shared, Type: "bind", Options: []string{"rbind", "ro"}})
				adj.SetLinuxMemoryLimit(64 << 20)
			}
			return adj, nil
		}
	})

	// Lifecycle and adjustments.
	podCfg := podConfig("nri")
	pod := d.runPod(ctx, podCfg)
	cfg := ctrConfig("adjusted", "sleep", "1000")
	cid := d.createStart(ctx, pod, podCfg, cfg)
	r, err := d.exec(ctx, cid, 0, "sh", "-c", "echo $FROM_NRI; cat /nri/note; cat /sys/fs/cgroup/memory.max; touch /nri/x 2>&1")
	if err != nil {
		t.Fatal(err)
	}
	if want := "yes\ninjected\n67108864\ntouch: /nri/x: Read-only file system\n"; string(r.Stdout) != want {
		t.Errorf("adjusted container: %q, want %q", r.Stdout, want)
	}
	if _, err := d.rs.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: cid, Timeout: 5}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.rs.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: cid}); err != nil {
		t.Fatal(err)
	}
	if got, want := a.of(cid), []string{"CreateContainer", "StartContainer", "StopContainer", "RemoveContainer"}; !slices.Equal(got, want) {
		t.Errorf("container events %v, want %v", got, want)
	}
	a.mu.Lock()
	for _, e := range a.events {
		if e.ctr == cid && e.ctrName != "adjusted" {
			t.Errorf("event %+v lacks the container's name", e)
		}
		if e.pod == pod && e.ctr == "" && (e.podName != "nri" || e.podUID != "nri-uid") {
			t.Errorf("event %+v lacks the pod's metadata", e)
		}
	}
	a.mu.Unlock()

	// A failing CreateContainer hook, and an adjustment a VM cannot
	// honour, fail the create and leave nothing.
	for _, what := range []string{"hook error", "OCI hooks"} {
		mu.Lock()
		failCreate, refuseHooks = what == "hook error", what == "OCI hooks"
		mu.Unlock()
		_, err = d.rs.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: pod, Config: ctrConfig("retry", "sleep", "1000"), SandboxConfig: podCfg})
		if err == nil {
			t.Fatalf("CreateContainer with a %s succeeded", what)
		}
		if l, _ := d.rs.ListContainers(ctx, &runtimeapi.ListContainersRequest{}); len(l.GetContainers()) != 0 {
			t.Errorf("containers left by a create failed by a %s: %v", what, l.GetContainers())
		}
	}
	retry := d.createStart(ctx, pod, podCfg, ctrConfig("retry", "sleep", "1000"))

	// A late plugin is synchronised with what exists; a container created
	// while it synchronises is not lost to it.
	release := make(chan struct{})
	syncing := make(chan struct{})
	var bOnce sync.Once
	var b *nriPlugin
	bDone := make(chan struct{})
	go func() {
		defer close(bDone)
		b = connectNRI(t, socket, "test-b", "10", func(p *nriPlugin) {
			p.onSync = func(ctx context.Context) error {
				bOnce.Do(func() { close(syncing) })
				select {
				case <-release:
				case <-ctx.Done():
				}
				return nil
			}
		})
	}()
	select {
	case <-syncing:
	case <-time.After(30 * time.Second):
		t.Fatal("the second plugin was never synchronised")
	}
	during := make(chan string, 1)
	go func() {
		r, err := d.rs.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: pod, Config: ctrConfig("during", "sleep", "1000"), SandboxConfig: podCfg})
		if err != nil {
			t.Errorf("CreateContainer during a plugin's synchronisation: %v", err)
		}
		during <- r.GetContainerId()
	}()
	time.Sleep(time.Second)
	close(release)
	<-bDone
	if b == nil {
		t.FailNow()
	}
	duringID := <-during
	b.mu.Lock()
	if !slices.Contains(b.syncPods, pod) || !slices.Contains(b.syncCtrs, retry) {
		t.Errorf("second plugin synchronised with pods %v containers %v, want pod %s and container %s", b.syncPods, b.syncCtrs, pod, retry)
	}
	b.mu.Unlock()
	if !slices.Contains(b.of(duringID), "CreateContainer") && !slices.Contains(b.syncCtrs, duringID) {
		t.Errorf("second plugin lost container %s created while it synchronised", duringID)
	}

	// StopPodSandbox: the plugins hear of it once, with the containers
	// already stopped and the pod still there.
	var stopSeen []string
	a.mu.Lock()
	a.onStopPod = func(ctx context.Context, p *api.PodSandbox) error {
		l, err := d.rs.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{PodSandboxId: p.GetId()}})
		if err != nil {
			return err
		}
		for _, c := range l.Containers {
			stopSeen = append(stopSeen, c.State.String())
		}
		if _, err := d.rs.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: p.GetId()}); err != nil {
			stopSeen = append(stopSeen, "status: "+err.Error())
		}
		return nil
	}
	a.mu.Unlock()
	for range 2 {
		if _, err := d.rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod}); err != nil {
			t.Fatal(err)
		}
	}
	// "during" was created, never started.
	if want := []string{"CONTAINER_EXITED", "CONTAINER_CREATED"}; !slices.Equal(stopSeen, want) {
		t.Errorf("during the StopPodSandbox hook: %v, want %v", stopSeen, want)
	}
	if n := strings.Count(strings.Join(a.of(pod), " "), "StopPodSandbox"); n != 1 {
		t.Errorf("StopPodSandbox events for two stops: %d, want 1 (%v)", n, a.of(pod))
	}
	if _, err := d.rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatal(err)
	}
	if got := a.of(pod); got[0] != "RunPodSandbox" || got[len(got)-1] != "RemovePodSandbox" {
		t.Errorf("pod events %v", got)
	}

	// A RunPodSandbox hook in progress: the pod is not listed and takes no
	// container; then it is ready.
	hookIn, hookOut := make(chan string), make(chan struct{})
	a.mu.Lock()
	a.onRun = func(ctx context.Context, p *api.PodSandbox) error {
		if p.GetName() != "blocked" {
			return nil
		}
		hookIn <- p.GetId()
		<-hookOut
		return nil
	}
	a.mu.Unlock()
	blockedCfg := podConfig("blocked")
	ran := make(chan string, 1)
	go func() {
		r, err := d.rs.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: blockedCfg})
		if err != nil {
			t.Errorf("RunPodSandbox after its hook: %v", err)
		}
		ran <- r.GetPodSandboxId()
	}()
	var hookID string
	select {
	case hookID = <-hookIn:
	case <-time.After(2 * time.Minute):
		t.Fatal("RunPodSandbox hook not reached")
	}
	l, err := d.rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range l.Items {
		if p.Id == hookID {
			t.Errorf("pod %s listed while its RunPodSandbox hook runs", hookID)
		}
	}
	if _, err := d.rs.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: hookID, Config: ctrConfig("early", "true"), SandboxConfig: blockedCfg}); err == nil {
		t.Error("a container was created in a pod whose RunPodSandbox hook runs")
	}
	close(hookOut)
	blocked := <-ran
	if st, err := d.rs.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: blocked}); err != nil || st.Status.State != runtimeapi.PodSandboxState_SANDBOX_READY {
		t.Errorf("pod after its hook: %v %v", st, err)
	}

	if _, err := d.rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: blocked}); err != nil {
		t.Fatal(err)
	}

	// A failing RunPodSandbox hook fails the pod, which leaves nothing
	// behind (no pod is left at all here), and a retry works.
	before := d.hostState(t)
	var failed bool
	a.mu.Lock()
	a.onRun = func(_ context.Context, p *api.PodSandbox) error {
		if p.GetName() == "refused" && !failed {
			failed = true
			return errors.New("induced RunPodSandbox failure")
		}
		return nil
	}
	a.mu.Unlock()
	refusedCfg := podConfig("refused")
	if _, err := d.rs.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: refusedCfg}); err == nil {
		t.Fatal("RunPodSandbox succeeded though its hook failed")
	}
	if left := d.hostState(t).leftSince(before); len(left) > 0 {
		t.Errorf("a pod refused by a plugin left %v", left)
	}
	if l, _ := d.rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); len(l.GetItems()) != 0 {
		t.Errorf("pods after a refused one: %v", l.GetItems())
	}
	refused := d.runPod(ctx, refusedCfg)
	if _, err := d.rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: refused}); err != nil {
		t.Fatal(err)
	}
}
