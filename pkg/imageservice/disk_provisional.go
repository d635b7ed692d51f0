package imageservice

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"
)

// ErrInUse: the image is used by a container.
var ErrInUse = errors.New("image in use")

var (
	pinsMu sync.Mutex
	pins   = map[string]int{}
	diskMu sync.Mutex
)

// Acquire pins an image while a container uses it.
func (s *Service) Acquire(id string) (func(), error) {
	pinsMu.Lock()
	pins[id]++
	pinsMu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			pinsMu.Lock()
			pins[id]--
			pinsMu.Unlock()
		})
	}, nil
}

// Disk returns the image's EROFS filesystem image, built once.
func (s *Service) Disk(ctx context.Context, id string) (string, error) {
	d, err := digest.Parse(id)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalidReference, err)
	}
	img, err := s.Get(id)
	if err != nil {
		return "", err
	}
	diskMu.Lock()
	defer diskMu.Unlock()
	final := filepath.Join(s.root, "disks", d.Encoded()+".erofs")
	if _, err := os.Stat(final); err == nil {
		return final, nil
	}
	os.MkdirAll(filepath.Dir(final), 0o700)
	tmp, err := os.MkdirTemp(filepath.Join(s.root, "disks"), ".build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	rootDir := filepath.Join(tmp, "root")
	os.Mkdir(rootDir, 0o755)
	root, err := os.OpenRoot(rootDir)
	if err != nil {
		return "", err
	}
	defer root.Close()
	for _, l := range img.Layers {
		f, err := s.store.Open(l)
		if err != nil {
			return "", err
		}
		err = applyLayer(root, f)
		f.Close()
		if err != nil {
			return "", fmt.Errorf("apply layer %s: %w", l, err)
		}
	}
	out := filepath.Join(tmp, "disk.erofs")
	if b, err := exec.CommandContext(ctx, "mkfs.erofs", "--quiet", "-T0", out, rootDir).CombinedOutput(); err != nil {
		return "", fmt.Errorf("mkfs.erofs: %v: %s", err, b)
	}
	if err := os.Rename(out, final); err != nil {
		return "", err
	}
	return final, nil
}

func applyLayer(root *os.Root, r io.Reader) error {
	br := bufio.NewReader(r)
	var rd io.Reader = br
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return err
		}
		defer gz.Close()
		rd = gz
	}
	tr := tar.NewReader(rd)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name := strings.TrimPrefix(path.Clean("/"+h.Name), "/")
		if name == "" {
			continue
		}
		dir, base := path.Split(name)
		if base == ".wh..wh..opq" {
			ents, _ := fsReadDir(root, dir)
			for _, e := range ents {
				root.RemoveAll(path.Join(dir, e))
			}
			continue
		}
		if strings.HasPrefix(base, ".wh.") {
			root.RemoveAll(path.Join(dir, strings.TrimPrefix(base, ".wh.")))
			continue
		}
		if dir != "" {
			if err := root.MkdirAll(strings.TrimSuffix(dir, "/"), 0o755); err != nil {
				return err
			}
		}
		if fi, err := root.Lstat(name); err == nil && !(fi.IsDir() && h.Typeflag == tar.TypeDir) {
			root.RemoveAll(name)
		}
		mode := os.FileMode(h.Mode & 0o777)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := root.Mkdir(name, 0o755); err != nil && !os.IsExist(err) {
				return err
			}
		case tar.TypeReg:
			f, err := root.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			f.Close()
			if err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := root.Symlink(h.Linkname, name); err != nil {
				return err
			}
			root.Lchown(name, h.Uid, h.Gid)
			continue
		case tar.TypeLink:
			target := strings.TrimPrefix(path.Clean("/"+h.Linkname), "/")
			if err := root.Link(target, name); err != nil {
				return err
			}
			continue
		default:
			continue
		}
		root.Lchown(name, h.Uid, h.Gid)
		if h.Mode&04000 != 0 {
			mode |= os.ModeSetuid
		}
		if h.Mode&02000 != 0 {
			mode |= os.ModeSetgid
		}
		if h.Mode&01000 != 0 {
			mode |= os.ModeSticky
		}
		root.Chmod(name, mode)
	}
}

func fsReadDir(root *os.Root, dir string) ([]string, error) {
	if dir == "" {
		dir = "."
	}
	f, err := root.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}
