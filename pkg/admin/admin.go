// Package admin serves hyperlet's node-local admin endpoint: HTTP on a unix
// socket only root can use, beside the CRI socket, for what the CRI has no
// call for: the usage record, pausing a whole pod VM, and the image pulls in
// flight. hyperctl is its client.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"k8s.io/klog/v2"

	"github.com/hyperlet/hyperlet/pkg/imageservice"
	"github.com/hyperlet/hyperlet/pkg/sandbox"
)

// Pods pauses and resumes pod VMs.
type Pods interface {
	PausePod(ctx context.Context, id string) error
	ResumePod(ctx context.Context, id string) error
}

// Pulls reports the image pulls in flight.
type Pulls interface {
	Pulls() []imageservice.PullProgress
}

// Handler routes:
//
//	GET  /usage?since=T       the usage record (served by usage)
//	POST /pods/{id}/pause     stop the pod VM's vCPUs
//	POST /pods/{id}/unpause   start them again
//	GET  /pulls               the pulls in flight, as JSON
func Handler(pods Pods, pulls Pulls, usage http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /usage", usage)
	pod := func(fn func(context.Context, string) error) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if err := fn(r.Context(), r.PathValue("id")); err != nil {
				klog.V(2).InfoS("admin request failed", "path", r.URL.Path, "err", err)
				http.Error(w, err.Error(), statusOf(err))
				return
			}
			w.WriteHeader(http.StatusNoContent)
		}
	}
	mux.Handle("POST /pods/{id}/pause", pod(pods.PausePod))
	mux.Handle("POST /pods/{id}/unpause", pod(pods.ResumePod))
	mux.HandleFunc("GET /pulls", func(w http.ResponseWriter, _ *http.Request) {
		ps := pulls.Pulls()
		if ps == nil {
			ps = []imageservice.PullProgress{}
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(ps)
	})
	return mux
}

// statusOf maps the sandbox manager's errors to HTTP statuses.
func statusOf(err error) int {
	switch {
	case errors.Is(err, sandbox.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, sandbox.ErrNotReady):
		return http.StatusConflict
	case errors.Is(err, sandbox.ErrUnsupported):
		return http.StatusNotImplemented
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return http.StatusGatewayTimeout
	}
	return http.StatusInternalServerError
}

// Serve serves h on a unix socket only root can use, until ctx ends.
func Serve(ctx context.Context, socket string, h http.Handler) error {
	ln, err := listenPrivate(socket)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// listenPrivate binds socket mode 0600 with no moment at which anyone else
// could connect: it is made in a directory of its own, only root's, and
// renamed into place once its mode is set.
func listenPrivate(socket string) (net.Listener, error) {
	dir, err := os.MkdirTemp(filepath.Dir(socket), ".admin-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	ln, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, err
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	if err := os.Rename(tmp, socket); err != nil {
		ln.Close()
		return nil, err
	}
	return &unlinkOnClose{Listener: ln, path: socket}, nil
}

// unlinkOnClose removes the socket, under its final name, when closed.
type unlinkOnClose struct {
	net.Listener
	path string
}

func (l *unlinkOnClose) Close() error {
	err := l.Listener.Close()
	os.Remove(l.path)
	return err
}
