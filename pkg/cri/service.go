// Package cri serves the kubelet's CRI v1 RuntimeService and ImageService.
// It is a thin layer: each CRI method lives in its own file and calls into
// the packages below it.
package cri

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hyperlet/hyperlet/pkg/imageservice"
	"github.com/hyperlet/hyperlet/pkg/vm"
)

// RuntimeName is what Version reports.
const RuntimeName = "hyperlet"

// Service implements the CRI. Methods not yet implemented answer
// Unimplemented (from the embedded types), never panic.
type Service struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	runtimeapi.UnimplementedImageServiceServer

	version  string
	accel    func() (vm.Accel, error)
	images   ImageStore
	pods     Pods
	ctrs     Containers
	procs    Processes
	stats    Stats
	events   Events
	vms      VMs
	handlers []string    // named VM handlers, besides ""
	host     Host        // nil: no host runtime
	hostDown atomic.Bool // the host runtime's last list failed
	network  func() error
	streamer Streamer
	layerFS  string   // host mountpoint reported for writable layers
	observe  Observer // metrics
}

// Observer records what the CRI layer measures (pkg/metrics).
type Observer interface {
	ObservePodStart(boot string, d time.Duration)
	ObservePull(ref string, bytes int64, d time.Duration, err error)
}

// WithObserver records pod starts and image pulls.
func WithObserver(o Observer) Option { return func(s *Service) { s.observe = o } }

type noObserver struct{}

func (noObserver) ObservePodStart(string, time.Duration)           {}
func (noObserver) ObservePull(string, int64, time.Duration, error) {}

// ImageStore is what the CRI ImageService needs (pkg/imageservice).
type ImageStore interface {
	Pull(ctx context.Context, ref string, auth *imageservice.Auth) (*imageservice.Image, error)
	List() ([]*imageservice.Image, error)
	Get(ref string) (*imageservice.Image, error)
	Remove(ref string) error
	Usage() (imageservice.FsUsage, error)
}

var _ ImageStore = (*imageservice.Service)(nil)

// WithImages sets the image store behind the ImageService.
func WithImages(i ImageStore) Option { return func(s *Service) { s.images = i } }

var (
	_ runtimeapi.RuntimeServiceServer = (*Service)(nil)
	_ runtimeapi.ImageServiceServer   = (*Service)(nil)
)

// Option configures a Service.
type Option func(*Service)

// WithVersion sets the runtime version reported by Version.
func WithVersion(v string) Option { return func(s *Service) { s.version = v } }

// WithAccel reports the VM accelerator in use, or why none is usable.
func WithAccel(f func() (vm.Accel, error)) Option { return func(s *Service) { s.accel = f } }

// WithNetwork reports whether the pod network is ready, or why not.
func WithNetwork(ready func() error) Option { return func(s *Service) { s.network = ready } }

// WithVMHandlers names the RuntimeClass handlers whose pods run in VMs,
// besides the default one.
func WithVMHandlers(names []string) Option { return func(s *Service) { s.handlers = names } }

// WithLayerFS names the host directory reported as the writable layers'
// filesystem (kubelet stats it).
func WithLayerFS(dir string) Option { return func(s *Service) { s.layerFS = dir } }

// New returns a Service.
func New(opts ...Option) *Service {
	s := &Service{version: "dev", images: noImages{}, layerFS: "/", observe: noObserver{}}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Register adds both CRI services to a gRPC server.
func (s *Service) Register(g *grpc.Server) {
	runtimeapi.RegisterRuntimeServiceServer(g, s)
	runtimeapi.RegisterImageServiceServer(g, s)
}

// noImages stands in until an image store is configured.
type noImages struct{}

var errNoImages = fmt.Errorf("no image store configured: %w", errUnavailable)

func (noImages) Pull(context.Context, string, *imageservice.Auth) (*imageservice.Image, error) {
	return nil, errNoImages
}
func (noImages) List() ([]*imageservice.Image, error)    { return nil, errNoImages }
func (noImages) Get(string) (*imageservice.Image, error) { return nil, errNoImages }
func (noImages) Remove(string) error                     { return errNoImages }
func (noImages) Usage() (imageservice.FsUsage, error)    { return imageservice.FsUsage{}, errNoImages }
