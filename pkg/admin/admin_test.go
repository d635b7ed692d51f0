package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

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
