package imageservice

import (
	"bufio"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	"k8s.io/klog/v2"

	"github.com/hyperlet/hyperlet/pkg/imageservice/unpack"
)

// ErrInUse means an image is pinned by a container.
var ErrInUse = errors.New("image is in use")

// An image's disk is one read-only EROFS file holding its layers applied in
// order, built on first use and shared by every pod. It is built in a
// temporary directory under disks/ and renamed into place, so a crash never
// leaves a half-built disk under the final name; leftovers are removed when
// the service opens.

func (s *Service) diskDir() string { return filepath.Join(s.root, "disks") }

func (s *Service) diskPath(id digest.Digest) string {
	return filepath.Join(s.diskDir(), id.Encoded()+".erofs")
}

// cleanDisks removes temporary build directories a crash left.
func (s *Service) cleanDisks() error {
	if err := os.MkdirAll(s.diskDir(), 0o700); err != nil {
		return err
	}
	ents, err := os.ReadDir(s.diskDir())
	if err != nil {
		return err
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".build-") {
			klog.InfoS("removing an interrupted image disk build", "dir", e.Name())
			os.RemoveAll(filepath.Join(s.diskDir(), e.Name()))
		}
	}
	return nil
}

// Disk returns the path of the image's EROFS disk, building it once;
// concurrent callers share one build.
func (s *Service) Disk(ctx context.Context, id string) (string, error) {
	img, err := s.Get(id)
	if err != nil {
		return "", err
	}
	final := s.diskPath(img.ID)
	if _, err := os.Stat(final); err == nil {
		return final, nil
	}
	_, err, _ = s.disks.Do(img.ID.String(), func() (any, error) {
		if _, err := os.Stat(final); err == nil {
			return nil, nil
		}
		s.gcMu.RLock() // the blobs must stay while they are read
		defer s.gcMu.RUnlock()
		return nil, s.buildDisk(context.WithoutCancel(ctx), img, final)
	})
	if err != nil {
		return "", err
	}
	return final, nil
}

func (s *Service) buildDisk(ctx context.Context, img *Image, final string) error {
	tmp, err := os.MkdirTemp(s.diskDir(), ".build-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	rootDir := filepath.Join(tmp, "root")
	if err := os.Mkdir(rootDir, 0o755); err != nil {
		return err
	}
	root, err := os.OpenRoot(rootDir)
	if err != nil {
		return err
	}
	defer root.Close()
	for _, l := range img.Layers {
		if err := s.applyLayer(root, l); err != nil {
			return fmt.Errorf("image %s: layer %s: %w", img.ID, l, err)
		}
	}
	out := filepath.Join(tmp, "disk.erofs")
	// -T0: fixed timestamps for the filesystem's own metadata; file times,
	// owners, modes and xattrs come from the layers.
	cmd := exec.CommandContext(ctx, "mkfs.erofs", "--quiet", "-T0", "-x1", out, rootDir)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.erofs (erofs-utils): %v: %s", err, b)
	}
	f, err := os.Open(out)
	if err != nil {
		return err
	}
	err = f.Sync()
	f.Close()
	if err != nil {
		return err
	}
	if err := os.Rename(out, final); err != nil {
		return err
	}
	klog.InfoS("image disk built", "image", img.ID, "layers", len(img.Layers))
	return syncDir(s.diskDir())
}

func (s *Service) applyLayer(root *os.Root, d digest.Digest) error {
	f, err := s.store.Open(d)
	if err != nil {
		return err
	}
	defer f.Close()
	r, err := decompress(f)
	if err != nil {
		return err
	}
	defer r.Close()
	st, err := unpack.Apply(root, r, unpack.Options{})
	if err != nil {
		return err
	}
	if st.SkippedDevices > 0 || st.SkippedXattrs > 0 {
		klog.V(2).InfoS("layer entries left out", "layer", d, "devices", st.SkippedDevices, "xattrs", st.SkippedXattrs)
	}
	return nil
}

// decompress recognises gzip and zstd layers by their magic; anything else
// is read as a plain tar.
func decompress(r io.Reader) (io.ReadCloser, error) {
	br := bufio.NewReader(r)
	magic, _ := br.Peek(4)
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		return gzip.NewReader(br)
	case len(magic) == 4 && magic[0] == 0x28 && magic[1] == 0xb5 && magic[2] == 0x2f && magic[3] == 0xfd:
		z, err := zstd.NewReader(br)
		if err != nil {
			return nil, err
		}
		return z.IOReadCloser(), nil
	}
	return io.NopCloser(br), nil
}

// pins counts the containers using each image.
type pins struct {
	mu sync.Mutex
	n  map[string]int
}

// Acquire pins an image while a container uses it: Remove fails with
// ErrInUse until every release function has been called.
func (s *Service) Acquire(id string) (func(), error) {
	img, err := s.Get(id)
	if err != nil {
		return nil, err
	}
	key := img.ID.String()
	s.pins.mu.Lock()
	if s.pins.n == nil {
		s.pins.n = map[string]int{}
	}
	s.pins.n[key]++
	s.pins.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.pins.mu.Lock()
			if s.pins.n[key]--; s.pins.n[key] <= 0 {
				delete(s.pins.n, key)
			}
			s.pins.mu.Unlock()
		})
	}, nil
}

func (s *Service) pinned(id digest.Digest) bool {
	s.pins.mu.Lock()
	defer s.pins.mu.Unlock()
	return s.pins.n[id.String()] > 0
}
