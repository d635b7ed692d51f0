package imageservice

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hyperlet/hyperlet/pkg/config"
	"github.com/hyperlet/hyperlet/pkg/imageservice/imagetest"
)

// heldBody passes the first n bytes, then waits for release.
type heldBody struct {
	io.ReadCloser
	n       int64
	release <-chan struct{}
}

func (b *heldBody) Read(p []byte) (int, error) {
	if b.n <= 0 {
		<-b.release
		return b.ReadCloser.Read(p)
	}
	if int64(len(p)) > b.n {
		p = p[:b.n]
	}
	n, err := b.ReadCloser.Read(p)
	b.n -= int64(n)
	return n, err
}

func TestPullProgress(t *testing.T) {
	r := imagetest.StartRegistry(t, "", "")
	big := make([]byte, 1<<20)
	rand.Read(big)
	base := imagetest.Layer(t, map[string]string{"blob": hex.EncodeToString(big)})
	img := imagetest.Image(t, base, "p", "")
	r.Push(t, "hyperlet/big:1", img)
	ld, _ := base.Digest()
	size, _ := base.Size()
	layers, _ := img.Layers()
	var want int64
	for _, l := range layers {
		n, _ := l.Size()
		want += n
	}

	// A proxy holds the big layer's download halfway until released. It
	// flushes every write: the server's write buffer would otherwise keep the
	// tail of the first half back (by how much depends on the layer's size).
	release := make(chan struct{})
	var once sync.Once
	unhold := func() { once.Do(func() { close(release) }) }
	target, _ := url.Parse("http://" + r.Host)
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.FlushInterval = -1
	proxy.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.Method == http.MethodGet && strings.HasSuffix(resp.Request.URL.Path, "/blobs/"+ld.String()) {
			resp.Body = &heldBody{ReadCloser: resp.Body, n: size / 2, release: release}
		}
		return nil
	}
	srv := httptest.NewServer(proxy)
	defer srv.Close()
	// A failure releases the hold before srv.Close, which waits for the pull.
	defer unhold()
	s := newService(t, config.Registry{Mirrors: map[string]config.Mirror{"registry.test": {Endpoints: []string{srv.URL}}}})

	done := make(chan error, 1)
	go func() {
		_, err := s.Pull(context.Background(), "registry.test/hyperlet/big:1", nil)
		done <- err
	}()
	var got PullProgress
	deadline := time.Now().Add(30 * time.Second)
	for {
		if ps := s.Pulls(); len(ps) == 1 && ps[0].BytesDone >= size/2 {
			got = ps[0]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no pull halfway through in %v: %+v", s.Pulls(), s.Pulls())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got.Ref != "registry.test/hyperlet/big:1" || got.Layers != len(layers) || got.Bytes != want ||
		got.BytesDone >= got.Bytes || got.LayersDone >= got.Layers || got.Started.IsZero() {
		t.Errorf("progress halfway = %+v; want %d layers, %d bytes, not done", got, len(layers), want)
	}
	unhold()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if ps := s.Pulls(); len(ps) != 0 {
		t.Errorf("pulls after the pull returned: %+v", ps)
	}
}
