package sandbox

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

var (
	podsBucket       = []byte("pods")
	containersBucket = []byte("containers")
)

// store persists pod and container records in bbolt, so a restarted daemon
// (even after SIGKILL) finds them. Every change is one fsynced transaction.
type store struct {
	db *bolt.DB
}

func openStore(root string) (*store, error) {
	db, err := bolt.Open(filepath.Join(root, "sandboxes.db"), 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open sandbox database: %w", err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{podsBucket, containersBucket, poolBucket} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	return &store{db: db}, nil
}

func (s *store) close() error { return s.db.Close() }

func (s *store) put(bucket []byte, id string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).Put([]byte(id), b)
	})
}

func (s *store) delete(bucket []byte, id string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).Delete([]byte(id))
	})
}

// each decodes every record of a bucket into a fresh value from newV.
func each[T any](s *store, bucket []byte, fn func(*T)) error {
	return s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).ForEach(func(k, v []byte) error {
			rec := new(T)
			if err := json.Unmarshal(v, rec); err != nil {
				return fmt.Errorf("decode record %s: %w", k, err)
			}
			fn(rec)
			return nil
		})
	})
}
