// Package metrics exports hyperlet's Prometheus metrics: CRI requests by
// method and code, pod starts by how their VM started, image pulls by
// registry, the node's pod VMs and containers by state, the accelerator,
// and per pod what its VM costs the host and what its containers use in the
// guest. It serves them on their own listener, never the CRI socket.
package metrics

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"

	"github.com/hyperlet/hyperlet/pkg/sandbox"
)

const namespace = "hyperlet"

// Source is the node's pods and containers as the per-pod metrics read
// them (a *sandbox.Manager).
type Source interface {
	VMStatus() sandbox.VMStatus
	Pods() []*sandbox.Pod
	PodContainers(podID string) []*sandbox.Container
	ContainerStats(ctx context.Context, id string, openFiles bool) (*sandbox.ContainerStats, error)
}

// Metrics holds the registry and the metrics the CRI layer feeds.
type Metrics struct {
	reg         *prometheus.Registry
	requests    *prometheus.CounterVec
	latency     *prometheus.HistogramVec
	podStarts   *prometheus.HistogramVec
	vmStarts    *prometheus.HistogramVec
	phases      *prometheus.HistogramVec
	pulls       *prometheus.CounterVec
	pullBytes   *prometheus.CounterVec
	pullLatency *prometheus.HistogramVec
}

// startBuckets cover a warm-pool start on KVM (tens of ms) to a cold boot
// under TCG on a loaded node (a minute).
var startBuckets = []float64{0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64}

// Disks reports image disk sizes (an *imageservice.Service).
type Disks interface {
	DiskSize(id string) (int64, error)
}

// Usage is the node's metered pod VM time (a *usage.Meter).
type Usage interface {
	Totals(now time.Time) (seconds, vcpuSeconds, gibSeconds, cpuSeconds float64)
}

// New registers hyperlet's own metrics. Watch adds the node's pods.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "cri_requests_total", Help: "CRI requests by method and gRPC code.",
		}, []string{"method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "cri_request_duration_seconds", Help: "CRI request latency by method.",
			Buckets: []float64{0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"method"}),
		podStarts: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "pod_start_duration_seconds",
			Help:    "RunPodSandbox latency of started pods by how their VM started: boot, template (a clone) or pool (a warm VM).",
			Buckets: startBuckets,
		}, []string{"boot"}),
		vmStarts: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "vm_start_duration_seconds",
			Help:    "Time from asking for a VM to its agent answering, by how it started: boot or template (a clone); warm pool VMs included.",
			Buckets: startBuckets,
		}, []string{"boot"}),
		phases: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "start_phase_duration_seconds",
			Help:    "Time of each step of the calls that start pods and containers (RunPodSandbox, CreateContainer, StartContainer), by call and step.",
			Buckets: []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10},
		}, []string{"call", "phase"}),
		pulls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "image_pulls_total", Help: "Image pulls by registry and result (success or failure).",
		}, []string{"registry", "result"}),
		pullBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "image_pull_bytes_total", Help: "Bytes of the images pulled (compressed layers and config), by registry.",
		}, []string{"registry"}),
		pullLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "image_pull_duration_seconds", Help: "Successful image pull latency by registry.",
			Buckets: []float64{0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300},
		}, []string{"registry"}),
	}
	m.reg.MustRegister(m.requests, m.latency, m.podStarts, m.vmStarts, m.phases, m.pulls, m.pullBytes, m.pullLatency,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Watch reports the node's pods from src at each scrape, image disk sizes
// from disks (nil: none), the usage record's totals from use (nil: none) and
// the accelerator in use from accel.
func (m *Metrics) Watch(src Source, disks Disks, use Usage, accel func() string) {
	if use != nil {
		m.reg.MustRegister(&usageCollector{use: use})
	}
	m.reg.MustRegister(&nodeCollector{src: src, disks: disks, accel: accel})
}

// ObserveVMStart records how long a VM took to boot or resume from a
// template, agent ready.
func (m *Metrics) ObserveVMStart(boot string, d time.Duration) {
	m.vmStarts.WithLabelValues(boot).Observe(d.Seconds())
}

// ObservePhase records how long one step of a pod or container start took.
func (m *Metrics) ObservePhase(call, phase string, d time.Duration) {
	m.phases.WithLabelValues(call, phase).Observe(d.Seconds())
}

// Unary counts and times CRI requests. It goes first in the chain, so it
// sees the codes callers get.
func (m *Metrics) Unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	method := info.FullMethod[strings.LastIndexByte(info.FullMethod, '/')+1:]
	m.requests.WithLabelValues(method, status.Code(err).String()).Inc()
	m.latency.WithLabelValues(method).Observe(time.Since(start).Seconds())
	return resp, err
}

// ObservePodStart records a started pod's RunPodSandbox latency.
func (m *Metrics) ObservePodStart(boot string, d time.Duration) {
	m.podStarts.WithLabelValues(boot).Observe(d.Seconds())
}

// ObservePull records an image pull of ref.
func (m *Metrics) ObservePull(ref string, bytes int64, d time.Duration, err error) {
	reg := registryOf(ref)
	if err != nil {
		m.pulls.WithLabelValues(reg, "failure").Inc()
		return
	}
	m.pulls.WithLabelValues(reg, "success").Inc()
	m.pullBytes.WithLabelValues(reg).Add(float64(bytes))
	m.pullLatency.WithLabelValues(reg).Observe(d.Seconds())
}

func registryOf(ref string) string {
	r, err := name.ParseReference(ref)
	if err != nil {
		return "invalid"
	}
	return r.Context().RegistryStr()
}

// Handler serves the metrics in Prometheus' formats.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorLog: klogPrinter{}})
}

// Serve serves the metrics on addr until ctx ends.
func (m *Metrics) Serve(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	klog.InfoS("serving metrics", "address", ln.Addr().String())
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

type klogPrinter struct{}

func (klogPrinter) Println(v ...any) { klog.ErrorS(nil, "metrics", "detail", v) }

// statsTimeout bounds one scrape's calls into every guest.
const statsTimeout = 2 * time.Second

var (
	podLabels = []string{"pod", "namespace", "uid"}
	ctrLabels = []string{"pod", "namespace", "uid", "container"}

	podsDesc      = desc("pods", "Pod VMs by state.", "state")
	ctrsDesc      = desc("containers", "Containers of pod VMs by state.", "state")
	accelDesc     = desc("accelerator_info", "The accelerator pod VMs run under (kvm or tcg).", "accelerator")
	vmCPUDesc     = desc("pod_vm_cpu_seconds_total", "CPU time of the pod's VM on the host (guest, emulation and device models).", podLabels...)
	vmRSSDesc     = desc("pod_vm_memory_rss_bytes", "Resident host memory of the pod's VM.", podLabels...)
	vmPSSDesc     = desc("pod_vm_memory_pss_bytes", "Proportional share of host memory of the pod's VM (shared template pages split).", podLabels...)
	netRxDesc     = desc("pod_network_receive_bytes_total", "Bytes the pod received.", append(append([]string{}, podLabels...), "interface")...)
	netTxDesc     = desc("pod_network_transmit_bytes_total", "Bytes the pod sent.", append(append([]string{}, podLabels...), "interface")...)
	imageDiskDesc = desc("pod_image_disk_bytes", "Size of the read-only image disks attached to the pod's VM (shared with other pods using the same images).", podLabels...)
	pausedDesc    = desc("pod_vm_paused", "1 while the pod's VM is paused.", podLabels...)
	poolTakesDesc = desc("pool_takes_total", "Pod starts that looked for a warm VM, by result (hit or miss).", "result")
	poolReadyDesc = desc("pool_ready_vms", "Warm VMs ready for pods.")
	templatesDesc = desc("templates", "VM templates ready for clones.")
	tmplBytesDesc = desc("template_resident_bytes", "Template RAM held in host memory (shared by their clones).")
	tmplBuildDesc = desc("template_build_seconds", "How long each ready VM template took to build.", "template")
	tmplBuiltDesc = desc("template_builds_total", "VM template builds since the daemon started, by result (success or failure).", "result")
	queueDesc     = desc("start_queue", "Starts in flight and waiting, by queue (pod or container).", "queue", "state")
	ctrCPUDesc    = desc("container_cpu_seconds_total", "CPU time of a container in its pod's VM.", ctrLabels...)
	ctrMemoryDesc = desc("container_memory_working_set_bytes", "Working set of a container in its pod's VM.", ctrLabels...)
)

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(namespace, "", name), help, labels, nil)
}

// nodeCollector reads the node's pods at each scrape: their series come
// and go with the pods.
type nodeCollector struct {
	src   Source
	disks Disks
	accel func() string
}

func (c *nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{podsDesc, ctrsDesc, accelDesc, vmCPUDesc, vmRSSDesc, vmPSSDesc, netRxDesc, netTxDesc, imageDiskDesc, pausedDesc, poolTakesDesc, poolReadyDesc, templatesDesc, tmplBytesDesc, tmplBuildDesc, tmplBuiltDesc, queueDesc, ctrCPUDesc, ctrMemoryDesc} {
		ch <- d
	}
}

func (c *nodeCollector) Collect(ch chan<- prometheus.Metric) {
	if a := c.accel(); a != "" {
		ch <- prometheus.MustNewConstMetric(accelDesc, prometheus.GaugeValue, 1, a)
	}
	vs := c.src.VMStatus()
	ch <- prometheus.MustNewConstMetric(poolTakesDesc, prometheus.CounterValue, float64(vs.Pool.Hits), "hit")
	ch <- prometheus.MustNewConstMetric(poolTakesDesc, prometheus.CounterValue, float64(vs.Pool.Misses), "miss")
	ch <- prometheus.MustNewConstMetric(poolReadyDesc, prometheus.GaugeValue, float64(vs.Pool.Ready))
	ch <- prometheus.MustNewConstMetric(templatesDesc, prometheus.GaugeValue, float64(len(vs.Templates)))
	ch <- prometheus.MustNewConstMetric(tmplBytesDesc, prometheus.GaugeValue, float64(vs.TemplateBytes))
	ch <- prometheus.MustNewConstMetric(tmplBuiltDesc, prometheus.CounterValue, float64(vs.TemplateBuilds), "success")
	ch <- prometheus.MustNewConstMetric(tmplBuiltDesc, prometheus.CounterValue, float64(vs.TemplateBuildFailures), "failure")
	for _, t := range vs.Templates {
		ch <- prometheus.MustNewConstMetric(tmplBuildDesc, prometheus.GaugeValue, t.BuildTime.Seconds(), t.Key)
	}
	for q, g := range map[string]sandbox.GateStatus{"pod": vs.PodStarts, "container": vs.ContainerStarts} {
		ch <- prometheus.MustNewConstMetric(queueDesc, prometheus.GaugeValue, float64(g.Running), q, "running")
		ch <- prometheus.MustNewConstMetric(queueDesc, prometheus.GaugeValue, float64(g.Waiting), q, "waiting")
	}
	ctx, cancel := context.WithTimeout(context.Background(), statsTimeout)
	defer cancel()
	pods := map[string]float64{}
	ctrs := map[string]float64{}
	for _, s := range runtimeapi.PodSandboxState_name {
		pods[s] = 0
	}
	for _, s := range runtimeapi.ContainerState_name {
		ctrs[s] = 0
	}
	for _, p := range c.src.Pods() {
		state, _, _ := p.Snapshot()
		pods[state.String()]++
		md := p.Config().GetMetadata()
		pl := []string{md.GetName(), md.GetNamespace(), md.GetUid()}
		if u, err := p.VMUsage(); err == nil {
			ch <- prometheus.MustNewConstMetric(vmCPUDesc, prometheus.CounterValue, float64(u.CPUNanos)/1e9, pl...)
			ch <- prometheus.MustNewConstMetric(vmRSSDesc, prometheus.GaugeValue, float64(u.RSSBytes), pl...)
			ch <- prometheus.MustNewConstMetric(vmPSSDesc, prometheus.GaugeValue, float64(u.PSSBytes), pl...)
			for _, i := range u.Interfaces {
				il := append(append([]string{}, pl...), i.Name)
				ch <- prometheus.MustNewConstMetric(netRxDesc, prometheus.CounterValue, float64(i.RxBytes), il...)
				ch <- prometheus.MustNewConstMetric(netTxDesc, prometheus.CounterValue, float64(i.TxBytes), il...)
			}
		}
		if state == runtimeapi.PodSandboxState_SANDBOX_READY {
			paused := 0.0
			if p.Paused() {
				paused = 1
			}
			ch <- prometheus.MustNewConstMetric(pausedDesc, prometheus.GaugeValue, paused, pl...)
			if c.disks != nil {
				var n int64
				for _, id := range p.AttachedImages() {
					if size, err := c.disks.DiskSize(id); err == nil {
						n += size
					}
				}
				ch <- prometheus.MustNewConstMetric(imageDiskDesc, prometheus.GaugeValue, float64(n), pl...)
			}
		}
		for _, ctr := range c.src.PodContainers(p.ID()) {
			st := ctr.Status()
			ctrs[st.State.String()]++
			if st.State != runtimeapi.ContainerState_CONTAINER_RUNNING || ctx.Err() != nil {
				continue
			}
			stats, err := c.src.ContainerStats(ctx, ctr.ID(), false)
			if err != nil {
				continue
			}
			cl := append(append([]string{}, pl...), ctr.Config().GetMetadata().GetName())
			ch <- prometheus.MustNewConstMetric(ctrCPUDesc, prometheus.CounterValue, float64(stats.CPUUsageNanos)/1e9, cl...)
			ch <- prometheus.MustNewConstMetric(ctrMemoryDesc, prometheus.GaugeValue, float64(stats.MemoryWorkingSetBytes), cl...)
		}
	}
	for s, n := range pods {
		ch <- prometheus.MustNewConstMetric(podsDesc, prometheus.GaugeValue, n, s)
	}
	for s, n := range ctrs {
		ch <- prometheus.MustNewConstMetric(ctrsDesc, prometheus.GaugeValue, n, s)
	}
}

var (
	usageSecondsDesc = desc("usage_pod_vm_seconds_total", "Seconds pod VMs ran, from the usage record (every kept VM).")
	usageVCPUDesc    = desc("usage_vcpu_seconds_total", "vCPU-seconds pod VMs reserved.")
	usageGiBDesc     = desc("usage_memory_gib_seconds_total", "GiB-seconds of memory pod VMs reserved.")
	usageCPUDesc     = desc("usage_cpu_seconds_total", "Host CPU-seconds pod VMs used.")
)

// usageCollector exports the usage record's totals, which survive restarts.
type usageCollector struct{ use Usage }

func (c *usageCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- usageSecondsDesc
	ch <- usageVCPUDesc
	ch <- usageGiBDesc
	ch <- usageCPUDesc
}

func (c *usageCollector) Collect(ch chan<- prometheus.Metric) {
	s, v, g, cpu := c.use.Totals(time.Now())
	ch <- prometheus.MustNewConstMetric(usageSecondsDesc, prometheus.CounterValue, s)
	ch <- prometheus.MustNewConstMetric(usageVCPUDesc, prometheus.CounterValue, v)
	ch <- prometheus.MustNewConstMetric(usageGiBDesc, prometheus.CounterValue, g)
	ch <- prometheus.MustNewConstMetric(usageCPUDesc, prometheus.CounterValue, cpu)
}
