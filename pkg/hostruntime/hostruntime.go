// Package hostruntime is hyperlet's host runtime: the pods a VM cannot hold
// (those that share the host's network, PID or IPC namespace) and the pods
// whose RuntimeClass handler is a configured host handler run as ordinary
// containers on the host, by containerd's CRI over its socket, as frakti
// delegated them to Docker. hyperlet writes no second container engine.
package hostruntime

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Runtime is a CRI client of the host's containerd, plus what hyperlet
// needs to route to it.
type Runtime struct {
	runtimeapi.RuntimeServiceClient
	runtimeapi.ImageServiceClient

	conn     *grpc.ClientConn
	handlers []string

	mu    sync.Mutex
	auths map[string]*runtimeapi.AuthConfig // by image ref, from pulls through hyperlet
}

// Dial connects to containerd's CRI socket. The connection is made lazily:
// a containerd that is down makes host pods fail with Unavailable, and
// nothing else.
func Dial(endpoint string, handlers []string) (*Runtime, error) {
	conn, err := grpc.NewClient("unix://"+endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()),
		// A containerd restarted is used again within seconds (gRPC's
		// default backoff grows to two minutes).
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 2 * time.Second,
		}))
	if err != nil {
		return nil, fmt.Errorf("host runtime %s: %w", endpoint, err)
	}
	return &Runtime{
		RuntimeServiceClient: runtimeapi.NewRuntimeServiceClient(conn),
		ImageServiceClient:   runtimeapi.NewImageServiceClient(conn),
		conn:                 conn, handlers: handlers, auths: map[string]*runtimeapi.AuthConfig{},
	}, nil
}

// Close closes the connection.
func (r *Runtime) Close() error { return r.conn.Close() }

// Handlers are the RuntimeClass handlers that run on the host.
func (r *Runtime) Handlers() []string { return r.handlers }

// Wants says whether a pod runs on the host: it shares a host namespace,
// or its handler is a host handler.
func (r *Runtime) Wants(cfg *runtimeapi.PodSandboxConfig, handler string) bool {
	if handler != "" && slices.Contains(r.handlers, handler) {
		return true
	}
	ns := cfg.GetLinux().GetSecurityContext().GetNamespaceOptions()
	return ns.GetNetwork() == runtimeapi.NamespaceMode_NODE || ns.GetPid() == runtimeapi.NamespaceMode_NODE ||
		ns.GetIpc() == runtimeapi.NamespaceMode_NODE
}

// Handler is containerd's handler for a host pod's: containerd's default
// runtime for a VM handler's pod that shares host namespaces.
func (r *Runtime) Handler(handler string) string {
	if slices.Contains(r.handlers, handler) {
		return handler
	}
	return ""
}

// Remember keeps the credentials an image was pulled with through
// hyperlet, for pulling it into containerd when a host pod needs it.
func (r *Runtime) Remember(refs []string, auth *runtimeapi.AuthConfig) {
	if auth == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ref := range refs {
		r.auths[ref] = auth
	}
}

// EnsureImage makes the image named by refs (repo digests first, then
// tags, as hyperlet recorded them) available to containerd, pulling it with
// the credentials it was pulled with through hyperlet, and returns the ref
// containerd knows it by.
func (r *Runtime) EnsureImage(ctx context.Context, refs []string, sandbox *runtimeapi.PodSandboxConfig) (string, error) {
	if len(refs) == 0 {
		return "", fmt.Errorf("host runtime: the image has no name to pull it by")
	}
	for _, ref := range refs {
		st, err := r.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
		if err != nil {
			return "", fmt.Errorf("host runtime: image status %s: %w", ref, err)
		}
		if st.GetImage() != nil {
			return ref, nil
		}
	}
	var errs []error
	for _, ref := range refs {
		r.mu.Lock()
		auth := r.auths[ref]
		r.mu.Unlock()
		resp, err := r.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}, Auth: auth, SandboxConfig: sandbox})
		if err == nil {
			return resp.ImageRef, nil
		}
		errs = append(errs, err)
	}
	return "", fmt.Errorf("host runtime: pull %s: %v", refs[0], errs)
}
