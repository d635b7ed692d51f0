package imageservice

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/hyperlet/hyperlet/pkg/imageservice/unpack"
)

// maxArchiveBytes bounds an OCI layout archive unpacked for import.
const maxArchiveBytes = 64 << 30

// Import loads images for offline nodes from a `docker save` archive, an
// OCI image layout directory, or a tar of one. Every blob is verified into
// the content store as for a pull. Images are named by the archive (docker
// save's RepoTags, the layout's org.opencontainers.image.ref.name
// annotations) and by tags, which apply to every image imported.
func (s *Service) Import(ctx context.Context, path string, tags []string) ([]*Image, error) {
	s.gcMu.RLock()
	defer s.gcMu.RUnlock()
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.IsDir() {
		return s.importLayout(path, tags)
	}
	if isDockerArchive(path) {
		return s.importDockerArchive(path, tags)
	}
	// A tar of an OCI layout: unpacked with the hostile-layer defences.
	tmp, err := os.MkdirTemp(filepath.Join(s.root, "disks"), ".build-import-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	root, err := os.OpenRoot(tmp)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := unpack.Apply(root, f, unpack.Options{MaxTotalBytes: maxArchiveBytes}); err != nil {
		return nil, fmt.Errorf("unpack %s: %w", path, err)
	}
	// The layout is then read by path, outside the os.Root: it must hold
	// nothing that points elsewhere.
	if err := onlyFilesAndDirs(tmp); err != nil {
		return nil, fmt.Errorf("unpack %s: %w", path, err)
	}
	if _, err := os.Stat(filepath.Join(tmp, "index.json")); err != nil {
		return nil, fmt.Errorf("%s is neither a docker save archive nor an OCI layout: %w", path, errors.Join(ErrInvalidReference, err))
	}
	return s.importLayout(tmp, tags)
}

// onlyFilesAndDirs refuses symlinks (and anything else but regular files
// and directories) in an unpacked OCI layout, which needs none.
func onlyFilesAndDirs(dir string) error {
	return filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !e.Type().IsRegular() && !e.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			return fmt.Errorf("%w: %s is a %v, not a file or directory", unpack.ErrUnsafeLayer, rel, e.Type())
		}
		return nil
	})
}

// isDockerArchive reports whether a tar has docker save's manifest.json.
func isDockerArchive(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err != nil {
			return false
		}
		if filepath.Clean(h.Name) == "manifest.json" {
			return true
		}
	}
}

func (s *Service) importDockerArchive(path string, tags []string) ([]*Image, error) {
	opener := func() (io.ReadCloser, error) { return os.Open(path) }
	m, err := tarball.LoadManifest(opener)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	var out []*Image
	for _, desc := range m {
		var tag *name.Tag
		if len(desc.RepoTags) > 0 {
			t, err := name.NewTag(desc.RepoTags[0])
			if err != nil {
				return nil, fmt.Errorf("%w: %v", ErrInvalidReference, err)
			}
			tag = &t
		}
		img, err := tarball.Image(opener, tag)
		if err != nil {
			return nil, fmt.Errorf("read image from %s: %w", path, err)
		}
		rec, err := s.importImage(img, append(append([]string{}, desc.RepoTags...), tags...))
		if err != nil {
			return nil, err
		}
		out = append(out, rec)
	}
	return out, nil
}

func (s *Service) importLayout(dir string, tags []string) ([]*Image, error) {
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("read OCI layout %s: %w", dir, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	var out []*Image
	for _, d := range im.Manifests {
		names := append([]string{}, tags...)
		if n := d.Annotations["io.containerd.image.name"]; n != "" {
			names = append(names, n)
		} else if n := d.Annotations["org.opencontainers.image.ref.name"]; strings.ContainsAny(n, "/:") {
			// Often only a tag ("latest", as skopeo writes it), which
			// names no repository; only a full reference is a name.
			names = append(names, n)
		}
		var img v1.Image
		switch {
		case d.MediaType.IsIndex():
			child, err := idx.ImageIndex(d.Digest)
			if err != nil {
				return nil, err
			}
			if img, err = platformImage(child); err != nil {
				return nil, err
			}
		case d.MediaType.IsImage():
			if img, err = idx.Image(d.Digest); err != nil {
				return nil, err
			}
		default:
			continue
		}
		rec, err := s.importImage(img, names)
		if err != nil {
			return nil, err
		}
		out = append(out, rec)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("OCI layout %s holds no linux/amd64 image", dir)
	}
	return out, nil
}

// platformImage picks linux/amd64 from an index.
func platformImage(idx v1.ImageIndex) (v1.Image, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	for _, d := range im.Manifests {
		if d.Platform != nil && d.Platform.Satisfies(platform) {
			return idx.Image(d.Digest)
		}
	}
	return nil, fmt.Errorf("index has no %s/%s image", platform.OS, platform.Architecture)
}

// importImage names an image and stores it. The names are checked first:
// an image refused for want of a name leaves no blobs behind.
func (s *Service) importImage(img v1.Image, names []string) (*Image, error) {
	var tags []string
	for _, n := range names {
		named, err := Normalize(n)
		if err != nil {
			return nil, err
		}
		tags = union(tags, []string{named.String()})
	}
	if len(tags) == 0 {
		id, _ := img.ConfigName()
		return nil, fmt.Errorf("%w: image %s has no name in the archive; give one with a tag", ErrInvalidReference, id)
	}
	rec, err := s.storeImage(img, nil)
	if err != nil {
		return nil, err
	}
	rec.RepoTags = tags
	return s.record(rec)
}
