package cri

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"

	"github.com/hyperlet/hyperlet/pkg/hostruntime"
	"github.com/hyperlet/hyperlet/pkg/sandbox"
)

// Host is the host runtime (pkg/hostruntime): containerd's CRI, which runs
// the pods that share host namespaces or ask for a host handler. Calls for
// its pods and containers go to it as they are; lists, stats and status
// merge both runtimes.
type Host interface {
	runtimeapi.RuntimeServiceClient
	runtimeapi.ImageServiceClient
	Wants(cfg *runtimeapi.PodSandboxConfig, handler string) bool
	Handler(handler string) string
	Handlers() []string
	Remember(refs []string, auth *runtimeapi.AuthConfig)
	EnsureImage(ctx context.Context, refs []string, sandbox *runtimeapi.PodSandboxConfig) (string, error)
}

var _ Host = (*hostruntime.Runtime)(nil)

// WithHost sets the host runtime; without one, host-namespace pods are
// refused.
func WithHost(h Host) Option { return func(s *Service) { s.host = h } }

// hostPod says whether a pod ID is the host runtime's: one the VM runtime
// does not know, with a host runtime configured.
func (s *Service) hostPod(id string) bool {
	if s.host == nil || id == "" {
		return false
	}
	_, err := s.pods.Pod(id)
	return errors.Is(err, sandbox.ErrNotFound)
}

// hostContainer says the same of a container ID.
func (s *Service) hostContainer(id string) bool {
	if s.host == nil || id == "" {
		return false
	}
	_, err := s.ctrs.Container(id)
	return errors.Is(err, sandbox.ErrNotFound)
}

// hostList runs a list call on the host runtime; a host runtime that does
// not answer leaves the VM runtime's part of the list, logged.
func hostList[T any](s *Service, what string, fn func(Host) (T, error)) (T, bool) {
	var zero T
	if s.host == nil {
		return zero, false
	}
	v, err := fn(s.host)
	if err != nil {
		// kubelet lists every second: say so when it stops answering,
		// not at every list.
		if !s.hostDown.Swap(true) {
			klog.ErrorS(err, "host runtime: list; only VM pods are listed until it answers", "what", what)
		}
		return zero, false
	}
	if s.hostDown.Swap(false) {
		klog.InfoS("host runtime answers again", "what", what)
	}
	return v, true
}

// idempotent makes a stop or removal of an ID neither runtime knows
// succeed, as the CRI wants: the host runtime's NotFound is that case.
func idempotent[T any](resp *T, err error) (*T, error) {
	if status.Code(err) == codes.NotFound {
		return new(T), nil
	}
	return resp, err
}
