package imageservice

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestStorePut(t *testing.T) {
	s, err := NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	content := "layer bytes"
	good := digest.FromString(content)
	tests := []struct {
		name    string
		d       digest.Digest
		size    int64
		body    string
		wantErr error
	}{
		{name: "verified", d: good, size: int64(len(content)), body: content},
		{name: "unknown size", d: good, size: -1, body: content},
		{name: "wrong content", d: digest.FromString("other"), size: int64(len(content)), body: content, wantErr: ErrDigestMismatch},
		{name: "longer than announced", d: digest.FromString(content + "x"), size: int64(len(content)), body: content + "x", wantErr: ErrDigestMismatch},
		{name: "shorter than announced", d: digest.FromString("lay"), size: 10, body: "lay", wantErr: ErrDigestMismatch},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := s.Put(tc.d, tc.size, strings.NewReader(tc.body))
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Put = %v, want %v", err, tc.wantErr)
				}
				if s.Has(tc.d) {
					t.Fatal("a rejected blob was committed")
				}
				return
			}
			if err != nil || !s.Has(tc.d) {
				t.Fatalf("Put = %v, Has = %v", err, s.Has(tc.d))
			}
		})
	}
	if tmps, _ := os.ReadDir(s.tmpDir()); len(tmps) != 0 {
		t.Errorf("temporary files left: %d", len(tmps))
	}
	if err := s.Put("sha256:../../etc/passwd", 1, strings.NewReader("x")); err == nil {
		t.Error("a malformed digest was accepted")
	}
}

func TestStoreRemovesCrashLeftovers(t *testing.T) {
	root := t.TempDir()
	s, _ := NewStore(root)
	os.WriteFile(s.tmpDir()+"/half-written", []byte("x"), 0o600)
	s, _ = NewStore(root)
	if tmps, _ := os.ReadDir(s.tmpDir()); len(tmps) != 0 {
		t.Fatalf("leftover temp files survived reopening: %d", len(tmps))
	}
}
