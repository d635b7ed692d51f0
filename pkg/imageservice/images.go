package imageservice

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// Image is what hyperlet records of a pulled image.
type Image struct {
	// ID is the config digest (what kubelet and crictl call the image ID).
	ID          digest.Digest   `json:"id"`
	RepoTags    []string        `json:"repoTags"`
	RepoDigests []string        `json:"repoDigests"`
	Manifest    digest.Digest   `json:"manifest"`
	Config      digest.Digest   `json:"config"`
	Layers      []digest.Digest `json:"layers"`
	Size        uint64          `json:"size"`
	// User is the image config's User (uid, name, or either with :group).
	User string `json:"user"`
}

// blobs are every blob the image holds on to, including the manifest or
// index each repo digest names.
func (i *Image) blobs() []digest.Digest {
	out := append([]digest.Digest{i.Manifest, i.Config}, i.Layers...)
	for _, rd := range i.RepoDigests {
		if named, err := reference.ParseNormalizedNamed(rd); err == nil {
			if c, ok := named.(reference.Canonical); ok {
				out = append(out, c.Digest())
			}
		}
	}
	return out
}

var imagesBucket = []byte("images")

// imageDB keeps image records in bbolt: crash-safe, transactional.
type imageDB struct {
	db *bolt.DB
}

func openImageDB(root string) (*imageDB, error) {
	db, err := bolt.Open(filepath.Join(root, "images.db"), 0o600, nil)
	if err != nil {
		return nil, fmt.Errorf("open image db: %w", err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(imagesBucket)
		return err
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	return &imageDB{db: db}, nil
}

func (d *imageDB) close() error { return d.db.Close() }

func (d *imageDB) list() ([]*Image, error) {
	var out []*Image
	err := d.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(imagesBucket).ForEach(func(k, v []byte) error {
			var img Image
			if err := json.Unmarshal(v, &img); err != nil {
				return fmt.Errorf("image record %s: %w", k, err)
			}
			out = append(out, &img)
			return nil
		})
	})
	return out, err
}

// update runs fn over all records in one transaction; fn returns the
// records to write and the IDs to delete.
func (d *imageDB) update(fn func(all []*Image) (put []*Image, del []digest.Digest, err error)) error {
	return d.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(imagesBucket)
		var all []*Image
		err := b.ForEach(func(k, v []byte) error {
			var img Image
			if err := json.Unmarshal(v, &img); err != nil {
				return err
			}
			all = append(all, &img)
			return nil
		})
		if err != nil {
			return err
		}
		put, del, err := fn(all)
		if err != nil {
			return err
		}
		for _, id := range del {
			if err := b.Delete([]byte(id)); err != nil {
				return err
			}
		}
		for _, img := range put {
			v, err := json.Marshal(img)
			if err != nil {
				return err
			}
			if err := b.Put([]byte(img.ID), v); err != nil {
				return err
			}
		}
		return nil
	})
}

// ErrNotFound means no image matches a reference.
var ErrNotFound = errors.New("image not found")
