package imageservice

import (
	"archive/tar"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/opencontainers/go-digest"

	"github.com/hyperlet/hyperlet/pkg/config"
	"github.com/hyperlet/hyperlet/pkg/imageservice/imagetest"
	"github.com/hyperlet/hyperlet/pkg/imageservice/unpack"
)

// TestImport loads docker save archives and OCI layouts (directories and
// tars), checks how they are named, and that refused imports store nothing.
func TestImport(t *testing.T) {
	img := imagetest.Image(t, imagetest.Layer(t, map[string]string{"etc/os-release": "imported\n"}), "imp", "")
	id, _ := img.ConfigName()
	layers, _ := img.Layers()
	layerDigest, _ := layers[0].Digest()
	dir := t.TempDir()

	saved := filepath.Join(dir, "saved.tar")
	tag, _ := name.NewTag("example.com/app/imp:saved")
	if err := tarball.WriteToFile(saved, tag, img); err != nil {
		t.Fatal(err)
	}
	writeLayout := func(name string, ann map[string]string) string {
		p := filepath.Join(dir, name)
		lp, err := layout.Write(p, empty.Index)
		if err != nil {
			t.Fatal(err)
		}
		if err := lp.AppendImage(img, layout.WithAnnotations(ann)); err != nil {
			t.Fatal(err)
		}
		return p
	}
	full := writeLayout("full", map[string]string{"org.opencontainers.image.ref.name": "example.com/app/imp:oci"})
	bare := writeLayout("bare", map[string]string{"org.opencontainers.image.ref.name": "latest"})
	layoutTar := filepath.Join(dir, "layout.tar")
	imagetest.TarTree(t, full, layoutTar, nil)
	evilTar := filepath.Join(dir, "evil.tar")
	imagetest.TarTree(t, full, evilTar, &tar.Header{Name: "blobs/sha256/" + digest.FromString("x").Encoded(), Typeflag: tar.TypeSymlink, Linkname: "/etc/passwd"})

	tests := []struct {
		name     string
		path     string
		tags     []string
		wantTags []string
		wantErr  error
	}{
		{name: "docker save archive", path: saved, wantTags: []string{"example.com/app/imp:saved"}},
		{name: "docker save archive with a tag", path: saved, tags: []string{"imp:extra"},
			wantTags: []string{"example.com/app/imp:saved", "docker.io/library/imp:extra"}},
		{name: "layout directory named by ref.name", path: full, wantTags: []string{"example.com/app/imp:oci"}},
		{name: "layout tar", path: layoutTar, wantTags: []string{"example.com/app/imp:oci"}},
		{name: "bare ref.name is only a tag", path: bare, wantErr: ErrInvalidReference},
		{name: "bare ref.name with a tag", path: bare, tags: []string{"imp:given"}, wantTags: []string{"docker.io/library/imp:given"}},
		{name: "invalid tag", path: full, tags: []string{"Not A Name"}, wantErr: ErrInvalidReference},
		{name: "layout tar with a symlink", path: evilTar, wantErr: unpack.ErrUnsafeLayer},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(t.TempDir(), config.Registry{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			imgs, err := s.Import(context.Background(), tc.path, tc.tags)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Import = %v, want %v", err, tc.wantErr)
				}
				if s.store.Has(digest.Digest(layerDigest.String())) {
					t.Error("a refused import left its layer in the store")
				}
				if all, _ := s.List(); len(all) != 0 {
					t.Errorf("a refused import recorded %d images", len(all))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(imgs) != 1 || imgs[0].ID.String() != id.String() {
				t.Fatalf("imported %+v, want one image %s", imgs, id)
			}
			if !slices.Equal(imgs[0].RepoTags, tc.wantTags) {
				t.Errorf("RepoTags = %v, want %v", imgs[0].RepoTags, tc.wantTags)
			}
			for _, b := range imgs[0].blobs() {
				if !s.store.Has(b) {
					t.Errorf("blob %s not stored", b)
				}
			}
			if got, err := s.Get(tc.wantTags[0]); err != nil || got.ID != imgs[0].ID {
				t.Errorf("Get(%s) = %v, %v", tc.wantTags[0], got, err)
			}
			// An imported image's layers are as usable as a pulled one's.
			if _, err := s.Disk(context.Background(), imgs[0].ID.String()); err != nil {
				t.Errorf("Disk: %v", err)
			}
			if ents, _ := os.ReadDir(s.diskDir()); len(ents) != 1 {
				t.Errorf("disks dir after import and build: %v", ents)
			}
		})
	}
}
