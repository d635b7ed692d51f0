// Package imageservice pulls images from registries into a content-addressed
// store on disk and keeps the image records the CRI ImageService reports.
// Everything a registry sends is untrusted: blobs are verified against their
// digests before they are committed, and sizes are bounded.
package imageservice

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/opencontainers/go-digest"
)

// Store is a content-addressed blob store: blobs/sha256/<hex>. A blob is
// written to a temporary file, verified, fsynced and renamed into place, so
// a crash leaves either nothing or a complete, verified blob.
type Store struct {
	root string
}

// NewStore opens (creating) a store under root and removes temporary files
// a crash left behind.
func NewStore(root string) (*Store, error) {
	s := &Store{root: root}
	for _, d := range []string{s.blobDir(), s.tmpDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("create store: %w", err)
		}
	}
	tmps, _ := os.ReadDir(s.tmpDir())
	for _, t := range tmps {
		os.Remove(filepath.Join(s.tmpDir(), t.Name()))
	}
	return s, nil
}

func (s *Store) blobDir() string { return filepath.Join(s.root, "blobs", "sha256") }
func (s *Store) tmpDir() string  { return filepath.Join(s.root, "tmp") }

// ErrDigestMismatch means content did not match the digest it was sent under.
var ErrDigestMismatch = errors.New("content does not match its digest")

func (s *Store) path(d digest.Digest) (string, error) {
	if err := d.Validate(); err != nil {
		return "", fmt.Errorf("digest %q: %w", d, err)
	}
	if d.Algorithm() != digest.SHA256 {
		return "", fmt.Errorf("digest %s: only sha256 is supported", d)
	}
	return filepath.Join(s.blobDir(), d.Encoded()), nil
}

// Has reports whether the blob is present.
func (s *Store) Has(d digest.Digest) bool {
	p, err := s.path(d)
	if err != nil {
		return false
	}
	_, err = os.Stat(p)
	return err == nil
}

// Put stores r under d. size < 0 means unknown; otherwise exactly size bytes
// are expected. Nothing is committed unless the content hashes to d.
func (s *Store) Put(d digest.Digest, size int64, r io.Reader) error {
	dst, err := s.path(d)
	if err != nil {
		return err
	}
	if s.Has(d) {
		return nil
	}
	f, err := os.CreateTemp(s.tmpDir(), d.Encoded()+"-*")
	if err != nil {
		return fmt.Errorf("store %s: %w", d, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	defer f.Close()
	v := d.Verifier()
	src := r
	if size >= 0 {
		src = io.LimitReader(r, size+1)
	}
	n, err := io.Copy(io.MultiWriter(f, v), src)
	if err != nil {
		return fmt.Errorf("store %s: %w", d, err)
	}
	if size >= 0 && n != size {
		return fmt.Errorf("store %s: got %d bytes, want %d: %w", d, n, size, ErrDigestMismatch)
	}
	if !v.Verified() {
		return fmt.Errorf("store %s: %w", d, ErrDigestMismatch)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("store %s: %w", d, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("store %s: %w", d, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("store %s: %w", d, err)
	}
	return syncDir(s.blobDir())
}

// Open opens a blob.
func (s *Store) Open(d digest.Digest) (*os.File, error) {
	p, err := s.path(d)
	if err != nil {
		return nil, err
	}
	return os.Open(p)
}

// ReadAll reads a small blob (manifests, configs), refusing more than max bytes.
func (s *Store) ReadAll(d digest.Digest, max int64) ([]byte, error) {
	f, err := s.Open(d)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("blob %s larger than %d bytes", d, max)
	}
	return b, nil
}

// Delete removes a blob; a missing blob is not an error.
func (s *Store) Delete(d digest.Digest) error {
	p, err := s.path(d)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// Usage returns the bytes and inodes the store's blobs use.
func (s *Store) Usage() (bytes, inodes uint64, err error) {
	err = filepath.WalkDir(s.root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		inodes++
		if e.Type().IsRegular() && !strings.HasPrefix(p, s.tmpDir()) {
			info, err := e.Info()
			if err != nil {
				return err
			}
			bytes += uint64(info.Size())
		}
		return nil
	})
	return bytes, inodes, err
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
