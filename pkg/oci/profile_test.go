package oci

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadProfileBounds(t *testing.T) {
	dir := t.TempDir()
	ok := filepath.Join(dir, "ok.json")
	os.WriteFile(ok, []byte(`{"defaultAction":"SCMP_ACT_ALLOW"}`), 0o644)
	big := filepath.Join(dir, "big.json")
	os.WriteFile(big, []byte(strings.Repeat(" ", MaxSeccompProfileBytes+1)), 0o644)
	tests := []struct {
		name, path string
		wantErr    bool
	}{
		{"regular file", ok, false},
		{"endless device", "/dev/zero", true},
		{"directory", dir, true},
		{"too big", big, true},
		{"missing", filepath.Join(dir, "nope"), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := readProfile(tc.path)
			if (err != nil) != tc.wantErr {
				t.Fatalf("readProfile(%s) = %v, want error %v", tc.path, err, tc.wantErr)
			}
		})
	}
}
