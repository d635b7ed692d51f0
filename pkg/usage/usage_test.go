package usage

import (
	"testing"
	"time"

	"github.com/hyperlet/hyperlet/pkg/sandbox"
)

type noPods struct{}

func (noPods) Pods() []*sandbox.Pod { return nil }

func TestRecordAccounting(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	r := Record{VCPUs: 2, MemoryMiB: 512, Start: t0, End: t0.Add(10 * time.Second)}
	for _, tc := range []struct {
		name string
		got  float64
		want float64
	}{
		{"seconds", r.Seconds(t0.Add(time.Hour)), 10},
		{"vcpu-seconds", r.VCPUSeconds(t0), 20},
		{"GiB-seconds", r.GiBSeconds(t0), 5},
		{"running: seconds to now", Record{Start: t0}.Seconds(t0.Add(3 * time.Second)), 3},
		{"clock before start", Record{Start: t0}.Seconds(t0.Add(-time.Second)), 0},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %v, want %v", tc.name, tc.got, tc.want)
		}
	}
}

// A VM no longer seen ends at the last time it was seen, and the record
// survives reopening; records that ended longer ago than kept are dropped.
func TestSampleEndsAndKeeps(t *testing.T) {
	dir := t.TempDir()
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	m, err := Open(dir, noPods{}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	m.recs["a"] = &Record{PodID: "a", VCPUs: 1, MemoryMiB: 256, Start: t0, Seen: t0.Add(7 * time.Second)}
	m.recs["old"] = &Record{PodID: "old", Start: t0.Add(-3 * time.Hour), End: t0.Add(-2 * time.Hour)}
	if err := m.Sample(t0.Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	m.Close()
	m, err = Open(dir, noPods{}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	recs := m.Records(time.Time{})
	if len(recs) != 1 || recs[0].PodID != "a" || !recs[0].End.Equal(t0.Add(7*time.Second)) {
		t.Fatalf("records after reopening: %+v", recs)
	}
	if s, v, g, _ := m.Totals(t0.Add(time.Hour)); s != 7 || v != 7 || g != 1.75 {
		t.Errorf("totals %v %v %v", s, v, g)
	}
	if got := m.Records(t0.Add(8 * time.Second)); len(got) != 0 {
		t.Errorf("records since after its end: %v", got)
	}
}

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Time
		ok   bool
	}{
		{"", time.Time{}, true},
		{"1h", now.Add(-time.Hour), true},
		{"2026-12-01T10:00:00Z", time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC), true},
		{"yesterday", time.Time{}, false},
	} {
		got, err := ParseSince(tc.in, now)
		if (err == nil) != tc.ok || !got.Equal(tc.want) {
			t.Errorf("ParseSince(%q) = %v %v", tc.in, got, err)
		}
	}
}
