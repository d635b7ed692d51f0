// Package usage meters pod VMs by the second: when each started and
// stopped, its size (vCPUs, memory) and the host CPU time it used, kept in
// a database of its own so the record survives daemon crashes and
// restarts. A provider bills from it (seconds, vCPU-seconds, GiB-seconds
// reserved, CPU-seconds used).
package usage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"sort"
	"sync"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"

	bolt "go.etcd.io/bbolt"

	"github.com/hyperlet/hyperlet/pkg/sandbox"
)

// Record is one pod VM's life.
type Record struct {
	PodID     string `json:"podId"`
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	UID       string `json:"uid"`
	VCPUs     int    `json:"vcpus"`
	MemoryMiB int    `json:"memoryMiB"`
	// Start is when the pod was created; End when its VM was first seen
	// gone (0 while it runs); Seen the last time it was seen running.
	Start time.Time `json:"start"`
	End   time.Time `json:"end,omitzero"`
	Seen  time.Time `json:"seen"`
	// CPUSeconds is the VM's host CPU time when last seen.
	CPUSeconds float64 `json:"cpuSeconds"`
}

// Seconds is how long the VM ran (to its end, or to now while it runs).
func (r Record) Seconds(now time.Time) float64 {
	end := r.End
	if end.IsZero() {
		end = now
	}
	return max(end.Sub(r.Start).Seconds(), 0)
}

// VCPUSeconds and GiBSeconds are what the VM reserved.
func (r Record) VCPUSeconds(now time.Time) float64 { return r.Seconds(now) * float64(r.VCPUs) }
func (r Record) GiBSeconds(now time.Time) float64 {
	return r.Seconds(now) * float64(r.MemoryMiB) / 1024
}

// Pods is what the meter watches (a *sandbox.Manager).
type Pods interface {
	Pods() []*sandbox.Pod
}

// Meter samples the node's pod VMs and keeps their records.
type Meter struct {
	db   *bolt.DB
	pods Pods
	keep time.Duration

	mu   sync.Mutex
	recs map[string]*Record
}

var bucket = []byte("usage")

// Open opens (or creates) dir/usage.db. Records of VMs that ended more
// than keep ago are dropped (0: kept forever).
func Open(dir string, pods Pods, keep time.Duration) (*Meter, error) {
	db, err := bolt.Open(filepath.Join(dir, "usage.db"), 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("usage: %w", err)
	}
	m := &Meter{db: db, pods: pods, keep: keep, recs: map[string]*Record{}}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucket)
		if err != nil {
			return err
		}
		return b.ForEach(func(k, v []byte) error {
			var r Record
			if err := json.Unmarshal(v, &r); err != nil {
				klog.ErrorS(err, "drop an unreadable usage record", "pod", string(k))
				return nil
			}
			m.recs[r.PodID] = &r
			return nil
		})
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("usage: %w", err)
	}
	return m, nil
}

// Close closes the database.
func (m *Meter) Close() error { return m.db.Close() }

// Run samples every interval until ctx ends.
func (m *Meter) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := m.Sample(time.Now()); err != nil {
			klog.ErrorS(err, "usage sample")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Sample records the running VMs as seen at now: a new one starts a
// record, a running one updates its CPU time, one no longer running ends
// its record (at the last time it was seen: a VM that stopped while the
// daemon was down ended no later than that).
func (m *Meter) Sample(now time.Time) error {
	running := map[string]bool{}
	var changed []*Record
	m.mu.Lock()
	for _, p := range m.pods.Pods() {
		state, createdAt, _ := p.Snapshot()
		cpu, err := p.VMCPUNanos()
		if state != runtimeapi.PodSandboxState_SANDBOX_READY || err != nil {
			continue
		}
		running[p.ID()] = true
		r, ok := m.recs[p.ID()]
		if !ok {
			md := p.Config().GetMetadata()
			vcpus, mem := p.Size()
			r = &Record{PodID: p.ID(), Name: md.GetName(), Namespace: md.GetNamespace(), UID: md.GetUid(),
				VCPUs: vcpus, MemoryMiB: mem, Start: time.Unix(0, createdAt).UTC()}
			m.recs[p.ID()] = r
		}
		if !r.End.IsZero() {
			continue
		}
		r.Seen, r.CPUSeconds = now.UTC(), float64(cpu)/1e9
		changed = append(changed, r)
	}
	var drop []string
	for id, r := range m.recs {
		switch {
		case r.End.IsZero() && !running[id]:
			r.End = r.Seen
			if r.End.Before(r.Start) {
				r.End = r.Start
			}
			changed = append(changed, r)
		case !r.End.IsZero() && m.keep > 0 && now.Sub(r.End) > m.keep:
			drop = append(drop, id)
			delete(m.recs, id)
		}
	}
	put := make(map[string][]byte, len(changed))
	for _, r := range changed {
		b, err := json.Marshal(r)
		if err != nil {
			m.mu.Unlock()
			return err
		}
		put[r.PodID] = b
	}
	m.mu.Unlock()
	if len(put) == 0 && len(drop) == 0 {
		return nil
	}
	return m.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		for k, v := range put {
			if err := b.Put([]byte(k), v); err != nil {
				return err
			}
		}
		for _, k := range drop {
			if err := b.Delete([]byte(k)); err != nil {
				return err
			}
		}
		return nil
	})
}

// Records lists the records of VMs running at or after since, oldest
// first.
func (m *Meter) Records(since time.Time) []Record {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Record
	for _, r := range m.recs {
		if r.End.IsZero() || !r.End.Before(since) {
			out = append(out, *r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Start.Before(out[j].Start) })
	return out
}

// Totals sums every record kept: seconds, vCPU-seconds, GiB-seconds and
// CPU-seconds.
func (m *Meter) Totals(now time.Time) (seconds, vcpuSeconds, gibSeconds, cpuSeconds float64) {
	for _, r := range m.Records(time.Time{}) {
		seconds += r.Seconds(now)
		vcpuSeconds += r.VCPUSeconds(now)
		gibSeconds += r.GiBSeconds(now)
		cpuSeconds += r.CPUSeconds
	}
	return
}

// ErrBadSince marks an unparsable --since.
var ErrBadSince = errors.New("since must be RFC 3339 or a duration")

// ParseSince reads RFC 3339 or a duration back from now ("1h").
func ParseSince(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("%w: %q", ErrBadSince, s)
}

// Handler serves the records as JSON: GET /usage?since=T (RFC 3339 or a
// duration back from now).
func (m *Meter) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /usage", func(w http.ResponseWriter, r *http.Request) {
		now := time.Now()
		since, err := ParseSince(r.URL.Query().Get("since"), now)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(Report{Now: now.UTC(), Records: m.Records(since)})
	})
	return mux
}

// Report is what the usage endpoint answers.
type Report struct {
	Now     time.Time `json:"now"`
	Records []Record  `json:"records"`
}
