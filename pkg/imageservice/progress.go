package imageservice

import (
	"io"
	"sort"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// PullProgress is a pull in flight: how much of the layers it had to fetch
// has arrived.
type PullProgress struct {
	Ref     string    `json:"ref"`
	Started time.Time `json:"started"`
	// Layers and Bytes are what the pull has to fetch (known once the
	// manifest is in; layers already stored are not counted).
	Layers     int   `json:"layers"`
	LayersDone int   `json:"layersDone"`
	Bytes      int64 `json:"bytes"`
	BytesDone  int64 `json:"bytesDone"`
}

// Pulls lists the pulls in flight, oldest first.
func (s *Service) Pulls() []PullProgress {
	var out []PullProgress
	s.inflight.Range(func(k, _ any) bool {
		out = append(out, k.(*progress).snapshot())
		return true
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Started.Before(out[j].Started) })
	return out
}

// progress counts one pull's bytes; a nil *progress counts nothing.
type progress struct {
	ref                string
	started            time.Time
	layers, layersDone atomic.Int64
	bytes, bytesDone   atomic.Int64
}

func (p *progress) need(layers []v1.Descriptor) {
	if p == nil {
		return
	}
	var n int64
	for _, l := range layers {
		n += l.Size
	}
	// A retry from another endpoint starts over.
	p.layersDone.Store(0)
	p.bytesDone.Store(0)
	p.layers.Store(int64(len(layers)))
	p.bytes.Store(n)
}

// stored counts a layer another pull stored meanwhile as fetched.
func (p *progress) stored(size int64) {
	if p != nil {
		p.bytesDone.Add(size)
		p.layersDone.Add(1)
	}
}

func (p *progress) layerDone() {
	if p != nil {
		p.layersDone.Add(1)
	}
}

func (p *progress) reader(r io.Reader) io.Reader {
	if p == nil {
		return r
	}
	return &countingReader{r: r, n: &p.bytesDone}
}

func (p *progress) snapshot() PullProgress {
	return PullProgress{Ref: p.ref, Started: p.started,
		Layers: int(p.layers.Load()), LayersDone: int(p.layersDone.Load()),
		Bytes: p.bytes.Load(), BytesDone: p.bytesDone.Load()}
}

type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n.Add(int64(n))
	return n, err
}
