package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	"k8s.io/klog/v2"
)

var (
	podsBucket       = []byte("pods")
	containersBucket = []byte("containers")
	// quarantineBucket keeps records that could not be decoded, keyed by
	// bucket/id, for an operator to look at; they are never acted on.
	quarantineBucket = []byte("quarantine")
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
		for _, b := range [][]byte{podsBucket, containersBucket, poolBucket, quarantineBucket} {
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

// each decodes every record of a bucket into a fresh value and calls fn
// with it. A record that cannot be decoded moves to the quarantine bucket
// (logged, not fatal: one bad record must not keep the daemon down).
func each[T any](s *store, bucket []byte, fn func(*T)) error {
	var bad [][2][]byte
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).ForEach(func(k, v []byte) error {
			rec := new(T)
			if err := json.Unmarshal(v, rec); err != nil {
				klog.ErrorS(err, "quarantining a record that cannot be decoded", "bucket", string(bucket), "id", string(k))
				bad = append(bad, [2][]byte{append([]byte(nil), k...)})
				return nil
			}
			fn(rec)
			return nil
		})
	})
	if err != nil || len(bad) == 0 {
		return err
	}
	var errs []error
	for _, kv := range bad {
		errs = append(errs, s.quarantine(bucket, string(kv[0])))
	}
	return errors.Join(errs...)
}

// quarantine moves a record to the quarantine bucket.
func (s *store) quarantine(bucket []byte, id string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucket).Get([]byte(id))
		if v == nil {
			return nil
		}
		if err := tx.Bucket(quarantineBucket).Put([]byte(string(bucket)+"/"+id), v); err != nil {
			return err
		}
		return tx.Bucket(bucket).Delete([]byte(id))
	})
}
