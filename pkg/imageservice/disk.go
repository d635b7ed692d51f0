package imageservice

import (
	"bufio"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"golang.org/x/sys/unix"
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

// DiskSize is the size of an image's disk, if it was built.
func (s *Service) DiskSize(id string) (int64, error) {
	d, err := digest.Parse(id)
	if err != nil {
		return 0, fmt.Errorf("%w: image ID %q", ErrNotFound, id)
	}
	fi, err := os.Stat(s.diskPath(d))
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// cleanDisks removes temporary build directories a crash left, and disks
// whose image record is gone (a crash between removing the record and the
// disk).
func (s *Service) cleanDisks() error {
	if err := os.MkdirAll(s.diskDir(), 0o700); err != nil {
		return err
	}
	ents, err := os.ReadDir(s.diskDir())
	if err != nil {
		return err
	}
	all, err := s.db.list()
	if err != nil {
		return err
	}
	known := map[string]bool{}
	for _, img := range all {
		known[img.ID.Encoded()+".erofs"] = true
	}
	for _, e := range ents {
		switch {
		case strings.HasPrefix(e.Name(), ".build-"):
			klog.InfoS("removing an interrupted image disk build", "dir", e.Name())
			os.RemoveAll(filepath.Join(s.diskDir(), e.Name()))
		case strings.HasSuffix(e.Name(), ".erofs") && !known[e.Name()]:
			klog.InfoS("removing the disk of a removed image", "disk", e.Name())
			os.Remove(filepath.Join(s.diskDir(), e.Name()))
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
	// The whole image is bounded, not each layer alone: by MaxImageBytes
	// and by what the disk can hold of the tree and its EROFS copy.
	budget, err := s.unpackBudget()
	if err != nil {
		return err
	}
	for _, l := range img.Layers {
		n, err := s.applyLayer(root, l, budget)
		if err != nil {
			return fmt.Errorf("image %s: layer %s: %w", img.ID, l, err)
		}
		budget -= n
	}
	out := filepath.Join(tmp, "disk.erofs")
	cmd := exec.CommandContext(ctx, "mkfs.erofs", mkfsArgs(out, rootDir)...)
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

// mkfsArgs are mkfs.erofs's arguments (erofs-utils 1.5 and later). Owners,
// modes, xattrs and each file's mtime come from the tree as the layers left
// it. There is deliberately no -T or SOURCE_DATE_EPOCH: in erofs-utils 1.5
// both set every file's mtime to that value, which breaks tools that compare
// times (Python's .pyc checks, make). Data is not compressed: lz4hc builds
// several times slower on the first start of a pod, and the guest would pay
// for decompression on every cold read.
func mkfsArgs(out, dir string) []string {
	return []string{"--quiet", "-x1", out, dir}
}

// MaxImageBytes bounds the file bytes of one unpacked image.
const MaxImageBytes = 64 << 30

// diskReserve is free space unpacking leaves on the image filesystem.
const diskReserve = 1 << 30

// unpackBudget is how many file bytes one image may unpack to: at most
// MaxImageBytes, and half of the free space beyond the reserve (the tree and
// its EROFS image both need room).
func (s *Service) unpackBudget() (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(s.diskDir(), &st); err != nil {
		return 0, fmt.Errorf("free space for image disks: %w", err)
	}
	free := int64(st.Bavail) * st.Bsize
	budget := min(int64(MaxImageBytes), (free-diskReserve)/2)
	if budget <= 0 {
		return 0, fmt.Errorf("%w: %d MiB free for image disks", ErrNoSpace, free>>20)
	}
	return budget, nil
}

// ErrNoSpace is an image that does not fit on the node's disk.
var ErrNoSpace = errors.New("no space for image disk")

// applyLayer unpacks one layer with at most budget file bytes and returns
// how many it wrote.
func (s *Service) applyLayer(root *os.Root, d digest.Digest, budget int64) (int64, error) {
	f, err := s.store.Open(d)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	r, err := decompress(f)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	if budget <= 0 {
		return 0, fmt.Errorf("%w: the image's layers exceed its unpack budget", unpack.ErrUnsafeLayer)
	}
	st, err := unpack.Apply(root, r, unpack.Options{MaxTotalBytes: budget})
	if err != nil {
		return 0, err
	}
	if st.SkippedDevices > 0 || st.SkippedXattrs > 0 {
		klog.V(2).InfoS("layer entries left out", "layer", d, "devices", st.SkippedDevices, "xattrs", st.SkippedXattrs)
	}
	return st.Bytes, nil
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
	// Remove holds pins.mu from its check to its commit, so the image is
	// either pinned before that check or seen gone here.
	s.pins.mu.Lock()
	if _, err := s.Get(key); err != nil {
		s.pins.mu.Unlock()
		return nil, err
	}
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

// pinned reports whether a container uses the image; pins.mu must be held.
func (s *Service) pinned(id digest.Digest) bool {
	return s.pins.n[id.String()] > 0
}
