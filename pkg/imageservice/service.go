package imageservice

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"time"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/singleflight"

	"github.com/hyperlet/hyperlet/pkg/config"
)

// Service is hyperlet's image store: pulls, records, removal, usage.
type Service struct {
	root     string
	store    *Store
	db       *imageDB
	registry config.Registry
	pulls    singleflight.Group
	inflight sync.Map           // *progress of the pulls in flight
	disks    singleflight.Group // image disk builds
	pins     pins
	gcMu     sync.RWMutex // pulls read-lock; removal + GC write-lock
}

// New opens the image service rooted at root (e.g. <hyperlet root>/images).
func New(root string, reg config.Registry) (*Service, error) {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, err
	}
	store, err := NewStore(filepath.Join(root, "content"))
	if err != nil {
		return nil, err
	}
	db, err := openImageDB(root)
	if err != nil {
		return nil, err
	}
	svc := &Service{root: root, store: store, db: db, registry: reg}
	if err := svc.cleanDisks(); err != nil {
		db.close()
		return nil, err
	}
	return svc, nil
}

// Close releases the database.
func (s *Service) Close() error { return s.db.close() }

// List returns every image.
func (s *Service) List() ([]*Image, error) { return s.db.list() }

var idPattern = regexp.MustCompile(`^(sha256:)?[a-f0-9]{64}$`)

// Get finds an image by ID, tag or digest reference.
func (s *Service) Get(ref string) (*Image, error) {
	all, err := s.db.list()
	if err != nil {
		return nil, err
	}
	img := find(all, ref)
	if img == nil {
		return nil, fmt.Errorf("%s: %w", ref, ErrNotFound)
	}
	return img, nil
}

func find(all []*Image, ref string) *Image {
	if idPattern.MatchString(ref) {
		for _, img := range all {
			if string(img.ID) == ref || img.ID.Encoded() == ref {
				return img
			}
		}
	}
	named, err := Normalize(ref)
	if err != nil {
		return nil
	}
	_, canonical := named.(reference.Canonical)
	for _, img := range all {
		if canonical && slices.Contains(img.RepoDigests, named.String()) ||
			!canonical && slices.Contains(img.RepoTags, named.String()) {
			return img
		}
	}
	return nil
}

// Remove deletes an image (all its names) and every blob no other image
// uses. Removing a missing image is not an error.
func (s *Service) Remove(ref string) error {
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	var removed *Image
	var keep []*Image
	s.pins.mu.Lock() // no Acquire between the check and the commit
	err := s.db.update(func(all []*Image) ([]*Image, []digest.Digest, error) {
		removed = find(all, ref)
		if removed == nil {
			return nil, nil, nil
		}
		if s.pinned(removed.ID) {
			return nil, nil, fmt.Errorf("remove image %s: %w by a container", removed.ID, ErrInUse)
		}
		for _, img := range all {
			if img.ID != removed.ID {
				keep = append(keep, img)
			}
		}
		return nil, []digest.Digest{removed.ID}, nil
	})
	s.pins.mu.Unlock()
	if err != nil || removed == nil {
		return err
	}
	if err := os.Remove(s.diskPath(removed.ID)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove image disk: %w", err)
	}
	used := map[digest.Digest]bool{}
	for _, img := range keep {
		for _, b := range img.blobs() {
			used[b] = true
		}
	}
	for _, b := range removed.blobs() {
		if !used[b] {
			if err := s.store.Delete(b); err != nil {
				return fmt.Errorf("remove image %s: %w", removed.ID, err)
			}
		}
	}
	return nil
}

// FsUsage is the store's footprint.
type FsUsage struct {
	Mountpoint    string
	Bytes, Inodes uint64
	Timestamp     time.Time
}

// Usage measures the store on disk: blobs and image disks.
func (s *Service) Usage() (FsUsage, error) {
	b, i, err := s.store.Usage()
	if err != nil {
		return FsUsage{}, err
	}
	ents, _ := os.ReadDir(s.diskDir())
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() {
			b += uint64(fi.Size())
			i++
		}
	}
	return FsUsage{Mountpoint: s.root, Bytes: b, Inodes: i, Timestamp: time.Now()}, nil
}
