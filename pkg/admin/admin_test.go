package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hyperlet/hyperlet/pkg/imageservice"
	"github.com/hyperlet/hyperlet/pkg/sandbox"
)

type fakePods map[string]error

func (f fakePods) PausePod(_ context.Context, id string) error  { return f[id] }
func (f fakePods) ResumePod(_ context.Context, id string) error { return f[id] }

type fakePulls []imageservice.PullProgress

func (f fakePulls) Pulls() []imageservice.PullProgress { return f }

func TestHandler(t *testing.T) {
	pods := fakePods{
		"ok":      nil,
		"missing": fmt.Errorf("pod missing: %w", sandbox.ErrNotFound),
		"stopped": fmt.Errorf("pod stopped: %w", sandbox.ErrNotReady),
		"paused":  fmt.Errorf("pod p: %w", sandbox.ErrPaused),
		"nopause": fmt.Errorf("cannot: %w", sandbox.ErrUnsupported),
		"broken":  errors.New("qmp: broken pipe"),
	}
	usage := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, r.URL.Query().Get("since")) })
	h := Handler(pods, fakePulls{{Ref: "docker.io/library/busybox:latest", Bytes: 10, BytesDone: 4}}, usage)
	for _, tc := range []struct {
		method, path string
		want         int
		body         string
	}{
		{"POST", "/pods/ok/pause", http.StatusNoContent, ""},
		{"POST", "/pods/ok/unpause", http.StatusNoContent, ""},
		{"POST", "/pods/missing/pause", http.StatusNotFound, "pod missing: not found\n"},
		{"POST", "/pods/stopped/pause", http.StatusConflict, ""},
		{"POST", "/pods/paused/pause", http.StatusConflict, ""},
		{"POST", "/pods/nopause/pause", http.StatusNotImplemented, ""},
		{"POST", "/pods/broken/unpause", http.StatusInternalServerError, ""},
		{"GET", "/pods/ok/pause", http.StatusMethodNotAllowed, ""},
		{"POST", "/pods/ok/explode", http.StatusNotFound, ""},
		{"GET", "/usage?since=1h", http.StatusOK, "1h"},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, nil))
		if rec.Code != tc.want || tc.body != "" && rec.Body.String() != tc.body {
			t.Errorf("%s %s = %d %q, want %d %q", tc.method, tc.path, rec.Code, rec.Body.String(), tc.want, tc.body)
		}
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/pulls", nil))
	var got []imageservice.PullProgress
	if err := json.NewDecoder(rec.Body).Decode(&got); err != nil || len(got) != 1 || got[0].BytesDone != 4 {
		t.Errorf("GET /pulls = %+v, %v", got, err)
	}
}

func TestServePrivateSocket(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "admin.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, sock, http.NotFoundHandler()) }()
	var fi os.FileInfo
	for i := 0; i < 100; i++ {
		var err error
		if fi, err = os.Stat(sock); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if fi == nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v", fi)
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := hc.Get("http://hyperlet/nothing")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("status %d", resp.StatusCode)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("left beside the socket: %v", ents)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(sock); err == nil {
		t.Error("socket left after Serve returned")
	}
}
