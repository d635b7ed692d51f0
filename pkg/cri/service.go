// Package cri serves the kubelet's CRI v1 RuntimeService and ImageService.
// It is a thin layer: each CRI method lives in its own file and calls into
// the packages below it.
package cri

import (
	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hyperlet/hyperlet/pkg/vm"
)

// RuntimeName is what Version reports.
const RuntimeName = "hyperlet"

// Service implements the CRI. Methods not yet implemented answer
// Unimplemented (from the embedded types), never panic.
type Service struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	runtimeapi.UnimplementedImageServiceServer

	version string
	accel   func() (vm.Accel, error)
}

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

// New returns a Service.
func New(opts ...Option) *Service {
	s := &Service{version: "dev"}
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
