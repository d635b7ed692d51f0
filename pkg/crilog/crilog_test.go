package crilog

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStream(t *testing.T) {
	long := strings.Repeat("x", MaxLine+10)
	tests := []struct {
		name   string
		writes []string
		want   []string // "stream tag content"
	}{
		{"lines", []string{"a\nb\n"}, []string{"stdout F a", "stdout F b"}},
		{"split writes", []string{"he", "llo\nwor", "ld\n"}, []string{"stdout F hello", "stdout F world"}},
		{"empty line", []string{"\n"}, []string{"stdout F "}},
		{"unterminated last line", []string{"a\nrest"}, []string{"stdout F a", "stdout F rest"}},
		{"long line", []string{long + "\n"}, []string{"stdout P " + long[:MaxLine], "stdout F " + long[MaxLine:]}},
		{"long unterminated", []string{long}, []string{"stdout P " + long[:MaxLine], "stdout F " + long[MaxLine:]}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "c", "0.log")
			l, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			l.now = func() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC) }
			s := l.Stream("stdout")
			for _, w := range tc.writes {
				if _, err := s.Write([]byte(w)); err != nil {
					t.Fatal(err)
				}
			}
			s.Close()
			l.Close()
			b, _ := os.ReadFile(path)
			got := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
			if len(got) != len(tc.want) {
				t.Fatalf("got %d records, want %d:\n%s", len(got), len(tc.want), b)
			}
			for i := range got {
				want := "2026-01-02T03:04:05.000000006Z " + tc.want[i]
				if got[i] != want {
					t.Errorf("record %d = %.80q, want %.80q", i, got[i], want)
				}
			}
		})
	}
}

func TestReopenAfterRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "0.log")
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s := l.Stream("stderr")
	s.Write([]byte("before\n"))
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	s.Write([]byte("after\n"))
	old, _ := os.ReadFile(path + ".1")
	cur, _ := os.ReadFile(path)
	if !strings.HasSuffix(string(old), " stderr F before\n") || !strings.HasSuffix(string(cur), " stderr F after\n") || strings.Contains(string(cur), "before") {
		t.Fatalf("rotated %q, current %q", old, cur)
	}
}
