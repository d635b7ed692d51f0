// Package unpack applies image layers (OCI / Docker layer tars) to a
// directory, treating every layer as written by an attacker. Every file
// operation goes through an os.Root, so no name, symlink or hardlink in a
// layer can make it read or write outside the target directory; entries that
// try are rejected with ErrUnsafeLayer. Whiteouts and opaque directories
// follow the OCI image spec's changeset rules.
package unpack

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	securejoin "github.com/cyphar/filepath-securejoin"
	"golang.org/x/sys/unix"
)

// ErrUnsafeLayer marks a layer entry that would escape the target
// directory or break a limit. The layer must not be used.
var ErrUnsafeLayer = errors.New("unsafe layer")

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
)

// Options bound what one layer may write.
type Options struct {
	MaxFileSize   int64 // largest regular file (0: 8 GiB)
	MaxTotalBytes int64 // all regular file bytes of the layer (0: 64 GiB)
	MaxEntries    int   // tar entries (0: 1,000,000)
}

// Stats counts what Apply left out.
type Stats struct {
	Files           int
	Bytes           int64 // regular file bytes written
	SkippedDevices  int   // device nodes and FIFOs (the VM's runc provides /dev)
	SkippedXattrs   int   // extended attributes outside the allowed namespaces
	HardlinksOrphan int
}

// Apply applies one uncompressed layer tar to root.
func Apply(root *os.Root, r io.Reader, opts Options) (Stats, error) {
	if opts.MaxFileSize == 0 {
		opts.MaxFileSize = 8 << 30
	}
	if opts.MaxTotalBytes == 0 {
		opts.MaxTotalBytes = 64 << 30
	}
	if opts.MaxEntries == 0 {
		opts.MaxEntries = 1_000_000
	}
	a := &applier{root: root, opts: opts, added: map[string]bool{}, holds: map[string]bool{}}
	tr := tar.NewReader(r)
	type dirTime struct {
		name  string
		mtime time.Time
	}
	var dirs []dirTime
	for n := 0; ; n++ {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return a.stats, fmt.Errorf("read layer: %w", err)
		}
		if n >= opts.MaxEntries {
			return a.stats, fmt.Errorf("%w: more than %d entries", ErrUnsafeLayer, opts.MaxEntries)
		}
		name, err := clean(h.Name)
		if err != nil {
			return a.stats, err
		}
		if name == "." {
			continue // the root itself keeps its attributes
		}
		if err := a.entry(name, h, tr); err != nil {
			return a.stats, fmt.Errorf("%s: %w", h.Name, err)
		}
		if h.Typeflag == tar.TypeDir {
			dirs = append(dirs, dirTime{name, h.ModTime})
		}
	}
	// Directory times last: creating entries inside changed them.
	for i := len(dirs) - 1; i >= 0; i-- {
		root.Chtimes(dirs[i].name, dirs[i].mtime, dirs[i].mtime)
	}
	a.stats.Bytes = a.total
	return a.stats, nil
}

// clean turns a tar name into a root-relative path. Names are relative to
// the layer root per the image spec; a leading "/" is dropped, but ".."
// anywhere is refused rather than resolved.
func clean(name string) (string, error) {
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("%w: %q has a .. component", ErrUnsafeLayer, name)
		}
	}
	c := path.Clean("/" + name)
	if c == "/" {
		return ".", nil
	}
	return strings.TrimPrefix(c, "/"), nil
}

type applier struct {
	root  *os.Root
	opts  Options
	total int64
	stats Stats
	// added are the paths this layer created and holds the directories
	// above them: an opaque marker clears only what lower layers had.
	added map[string]bool
	holds map[string]bool
}

// add records a path this layer creates.
func (a *applier) add(name string) {
	a.added[name] = true
	for d := path.Dir(name); d != "." && !a.holds[d]; d = path.Dir(d) {
		a.holds[d] = true
	}
}

func (a *applier) entry(name string, h *tar.Header, r io.Reader) error {
	dir, base := path.Split(name)
	dir, err := a.resolve(strings.TrimSuffix(dir, "/"))
	if err != nil {
		return err
	}
	name = path.Join(dir, base)
	if base == opaqueMarker {
		return a.opaque(dir)
	}
	if strings.HasPrefix(base, whiteoutPrefix) {
		// ".wh.", ".wh.." and ".wh..." would name the directory itself or
		// its parent.
		wname := strings.TrimPrefix(base, whiteoutPrefix)
		if wname == "" || wname == "." || wname == ".." {
			return fmt.Errorf("%w: malformed whiteout %q", ErrUnsafeLayer, name)
		}
		// dir is already resolved inside the root; os.Root guards the rest.
		target := path.Join(dir, wname)
		if err := a.root.RemoveAll(target); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return unsafe(err)
		}
		return nil
	}
	if dir != "." {
		if err := a.root.MkdirAll(dir, 0o755); err != nil {
			return unsafe(err)
		}
	}
	// An existing entry is replaced, except a directory by a directory.
	if fi, err := a.root.Lstat(name); err == nil {
		if !(fi.IsDir() && h.Typeflag == tar.TypeDir) {
			if err := a.root.RemoveAll(name); err != nil {
				return unsafe(err)
			}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return unsafe(err)
	}
	a.add(name)

	switch h.Typeflag {
	case tar.TypeDir:
		if err := a.root.Mkdir(name, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return unsafe(err)
		}
	case tar.TypeReg, tar.TypeRegA:
		if err := a.file(name, h, r); err != nil {
			return err
		}
	case tar.TypeSymlink:
		// The target is stored as is: the guest resolves it inside the
		// container's root. os.Root never follows it outward here.
		if err := a.root.Symlink(h.Linkname, name); err != nil {
			return unsafe(err)
		}
		return a.root.Lchown(name, h.Uid, h.Gid)
	case tar.TypeLink:
		target, err := clean(h.Linkname)
		if err != nil {
			return err
		}
		if target == "." {
			return fmt.Errorf("%w: hardlink to the root", ErrUnsafeLayer)
		}
		tdir, tbase := path.Split(target)
		if tdir, err = a.resolve(strings.TrimSuffix(tdir, "/")); err != nil {
			return err
		}
		target = path.Join(tdir, tbase)
		// os.Root refuses a target that resolves outside, also through
		// symlinked parents; a symlink target itself is linked, not followed.
		if err := a.root.Link(target, name); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				a.stats.HardlinksOrphan++
				return fmt.Errorf("hardlink to missing %q: %w", h.Linkname, err)
			}
			return unsafe(err)
		}
		return nil
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		a.stats.SkippedDevices++
		return nil
	case tar.TypeXGlobalHeader:
		return nil
	default:
		return fmt.Errorf("%w: unsupported entry type %q", ErrUnsafeLayer, h.Typeflag)
	}
	if err := a.root.Lchown(name, h.Uid, h.Gid); err != nil {
		return unsafe(err)
	}
	if err := a.root.Chmod(name, fileMode(h)); err != nil {
		return unsafe(err)
	}
	if err := a.xattrs(name, h); err != nil {
		return err
	}
	if h.Typeflag != tar.TypeDir {
		a.root.Chtimes(name, h.ModTime, h.ModTime)
	}
	return nil
}

// resolve follows the symlinks in a layer-relative directory path the way
// the container will see them: inside the root, so an absolute link such as
// var/run -> /run leads to <root>/run, never out of it
// (filepath-securejoin, as runc uses). os.Root stays the second line of
// defence for every operation on the result.
func (a *applier) resolve(dir string) (string, error) {
	if dir == "" || dir == "." {
		return ".", nil
	}
	full, err := securejoin.SecureJoin(a.root.Name(), dir)
	if err != nil {
		return "", fmt.Errorf("%w: resolve %q: %v", ErrUnsafeLayer, dir, err)
	}
	rel, err := filepath.Rel(a.root.Name(), full)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("%w: %q resolves outside the root", ErrUnsafeLayer, dir)
	}
	return filepath.ToSlash(rel), nil
}

// opaque clears what lower layers put in dir: every entry except those this
// layer added, and the directories holding them (whose own lower content
// goes too).
func (a *applier) opaque(dir string) error {
	f, err := a.root.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return unsafe(err)
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return err
	}
	for _, n := range names {
		p := path.Join(dir, n)
		if !a.added[p] && !a.holds[p] {
			if err := a.root.RemoveAll(p); err != nil {
				return unsafe(err)
			}
			continue
		}
		fi, err := a.root.Lstat(p)
		if err != nil {
			return unsafe(err)
		}
		if fi.IsDir() {
			if err := a.opaque(p); err != nil {
				return err
			}
		}
	}
	return nil
}

func (a *applier) file(name string, h *tar.Header, r io.Reader) error {
	if h.Size > a.opts.MaxFileSize {
		return fmt.Errorf("%w: file of %d bytes exceeds %d", ErrUnsafeLayer, h.Size, a.opts.MaxFileSize)
	}
	if a.total+h.Size > a.opts.MaxTotalBytes {
		return fmt.Errorf("%w: layer exceeds %d bytes", ErrUnsafeLayer, a.opts.MaxTotalBytes)
	}
	f, err := a.root.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return unsafe(err)
	}
	n, err := io.Copy(f, io.LimitReader(r, h.Size))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if n != h.Size {
		return fmt.Errorf("short file: %d of %d bytes", n, h.Size)
	}
	a.total += n
	a.stats.Files++
	return nil
}

// fileMode maps tar mode bits, including setuid, setgid and sticky.
func fileMode(h *tar.Header) os.FileMode {
	m := os.FileMode(h.Mode & 0o777)
	if h.Mode&0o4000 != 0 {
		m |= os.ModeSetuid
	}
	if h.Mode&0o2000 != 0 {
		m |= os.ModeSetgid
	}
	if h.Mode&0o1000 != 0 {
		m |= os.ModeSticky
	}
	return m
}

// xattrs sets PAX extended attributes in the user. namespace and file
// capabilities; others (trusted., security.selinux...) are skipped.
func (a *applier) xattrs(name string, h *tar.Header) error {
	for k, v := range h.PAXRecords {
		key, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok {
			continue
		}
		if !strings.HasPrefix(key, "user.") && key != "security.capability" {
			a.stats.SkippedXattrs++
			continue
		}
		f, err := a.root.OpenFile(name, os.O_RDONLY|unix.O_NOFOLLOW, 0)
		if err != nil {
			return unsafe(err)
		}
		err = unix.Fsetxattr(int(f.Fd()), key, []byte(v), 0)
		f.Close()
		if err != nil {
			return fmt.Errorf("set xattr %s: %w", key, err)
		}
	}
	return nil
}

// unsafe marks os.Root's refusals (paths escaping the root) as unsafe
// layer content.
func unsafe(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) && (strings.Contains(pe.Err.Error(), "escapes") || errors.Is(pe.Err, unix.ELOOP) || errors.Is(pe.Err, unix.EXDEV)) {
		return fmt.Errorf("%w: %v", ErrUnsafeLayer, err)
	}
	var le *os.LinkError
	if errors.As(err, &le) && strings.Contains(le.Err.Error(), "escapes") {
		return fmt.Errorf("%w: %v", ErrUnsafeLayer, err)
	}
	return err
}
