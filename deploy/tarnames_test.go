package deploy

import (
	"archive/tar"
	"io"
	"testing"
)

func newTarNames(t *testing.T, r io.Reader) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err != nil {
			return names
		}
		names[h.Name] = true
	}
}
