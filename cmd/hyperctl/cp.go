package main

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"k8s.io/client-go/tools/remotecommand"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// cp copies a file or directory between the host and a container, as a tar
// stream through the container's own tar (like kubectl cp): CONTAINER:SRC
// DEST or SRC CONTAINER:DEST. What comes out of a container is written as if
// an attacker made it: only under the destination, never through a link,
// without set-id bits or ownership.
func (c *cli) cp(ctx context.Context, src, dst string) error {
	sref, spath, sIn := splitCopyArg(src)
	dref, dpath, dIn := splitCopyArg(dst)
	switch {
	case sIn && dIn:
		return errors.New("cp: copy between containers through the host: two commands")
	case sIn:
		ct, err := c.container(ctx, sref)
		if err != nil {
			return err
		}
		return c.copyOut(ctx, ct.Id, spath, dst)
	case dIn:
		ct, err := c.container(ctx, dref)
		if err != nil {
			return err
		}
		return c.copyIn(ctx, ct.Id, src, dpath)
	}
	return errors.New("cp: one side must be CONTAINER:PATH")
}

// splitCopyArg reads CONTAINER:PATH; a local path with a colon must start
// with / or . (as for docker cp).
func splitCopyArg(arg string) (ref, p string, inContainer bool) {
	if strings.HasPrefix(arg, "/") || strings.HasPrefix(arg, ".") {
		return "", arg, false
	}
	ref, p, ok := strings.Cut(arg, ":")
	if !ok || ref == "" {
		return "", arg, false
	}
	return ref, p, true
}

// execStream runs cmd in the container with the given streams.
func (c *cli) execStream(ctx context.Context, id string, cmd []string, in io.Reader, out io.Writer) error {
	r, err := c.rs.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: id, Cmd: cmd, Stdin: in != nil, Stdout: true, Stderr: true})
	if err != nil {
		return err
	}
	var stderr bytes.Buffer
	err = spdyStream(ctx, r.Url, remotecommand.StreamOptions{Stdin: in, Stdout: out, Stderr: &stderr})
	if err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return fmt.Errorf("%s: %w", msg, err)
		}
	}
	return err
}

func (c *cli) copyOut(ctx context.Context, id, src, dst string) error {
	src = path.Clean("/" + src)
	if src == "/" {
		return errors.New("cp: copy a path below /, not the whole root")
	}
	dir, base := path.Split(src)
	// Into dst if it is a directory, else as dst.
	final := dst
	if fi, err := os.Stat(dst); err == nil && fi.IsDir() {
		final = filepath.Join(dst, base)
	}
	// Unpacked in a fresh directory beside the destination, then renamed
	// into place: nothing the container sends can reach what is there.
	tmp, err := os.MkdirTemp(filepath.Dir(final), ".hyperctl-cp-")
	if err != nil {
		return fmt.Errorf("cp: %w", err)
	}
	defer os.RemoveAll(tmp)
	root, err := os.OpenRoot(tmp)
	if err != nil {
		return fmt.Errorf("cp: %w", err)
	}
	defer root.Close()
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		err := untar(root, pr, base)
		pr.CloseWithError(err)
		errc <- err
	}()
	err = c.execStream(ctx, id, []string{"tar", "cf", "-", "-C", dir, base}, nil, pw)
	pw.CloseWithError(err)
	uerr := <-errc
	if err != nil {
		return fmt.Errorf("cp: tar in the container: %w", err)
	}
	if uerr != nil {
		return uerr
	}
	if err := os.Rename(filepath.Join(tmp, base), final); err != nil {
		return fmt.Errorf("cp: %w", err)
	}
	return nil
}

// untar writes a tar stream whose every entry is top or under it into
// root. Links are made as links, but nothing is written through one: every
// directory on an entry's path must be a real directory the stream made.
func untar(root *os.Root, r io.Reader, top string) error {
	tr := tar.NewReader(r)
	seen := false
	for {
		h, err := tr.Next()
		if err == io.EOF {
			if !seen {
				return errors.New("cp: the container sent nothing")
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("cp: read the container's tar: %w", err)
		}
		name := path.Clean(h.Name)
		if !fs.ValidPath(name) || name == "." {
			return fmt.Errorf("cp: unsafe name %q in the container's tar", h.Name)
		}
		if name != top && !strings.HasPrefix(name, top+"/") {
			return fmt.Errorf("cp: %q in the container's tar is not under %q", h.Name, top)
		}
		seen = true
		mode := fs.FileMode(h.Mode) & fs.ModePerm // no set-id or sticky bits from a container
		switch h.Typeflag {
		case tar.TypeDir:
			if err := mkdirs(root, name); err != nil {
				return err
			}
			root.Chmod(name, mode|0o700) // a real directory: mkdirs checked
		case tar.TypeReg:
			if err := mkdirs(root, path.Dir(name)); err != nil {
				return err
			}
			root.Remove(name) // replace, never write through what was there
			f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
			if err != nil {
				return fmt.Errorf("cp: %w", err)
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("cp: %s: %w", name, err)
			}
		case tar.TypeSymlink:
			if err := mkdirs(root, path.Dir(name)); err != nil {
				return err
			}
			root.Remove(name)
			if err := root.Symlink(h.Linkname, name); err != nil {
				return fmt.Errorf("cp: %w", err)
			}
		default:
			fmt.Fprintf(os.Stderr, "hyperctl cp: skipping %s (not a file, directory or symlink)\n", name)
		}
	}
}

// mkdirs makes dir and its parents under root, refusing any that exists
// as something other than a directory (a symlink above all).
func mkdirs(root *os.Root, dir string) error {
	if dir == "." {
		return nil
	}
	p := ""
	for _, part := range strings.Split(dir, "/") {
		p = path.Join(p, part)
		fi, err := root.Lstat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := root.Mkdir(p, 0o755); err != nil {
				return fmt.Errorf("cp: %w", err)
			}
		case err != nil:
			return fmt.Errorf("cp: %w", err)
		case !fi.IsDir():
			return fmt.Errorf("cp: %s in the container's tar is not a directory: refusing to write through it", p)
		}
	}
	return nil
}

func (c *cli) copyIn(ctx context.Context, id, src, dst string) error {
	dst = path.Clean("/" + dst)
	// A missing source fails here, before anything runs in the container.
	_, err := os.Lstat(src)
	if err != nil {
		return fmt.Errorf("cp: %w", err)
	}
	// Into dst if it is a directory in the container, else as dst.
	into, name := dst, filepath.Base(filepath.Clean(src))
	if !c.isDir(ctx, id, dst) {
		into, name = path.Dir(dst), path.Base(dst)
	}
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		err := tarTree(pw, src, name)
		pw.CloseWithError(err)
		errc <- err
	}()
	err = c.execStream(ctx, id, []string{"tar", "xf", "-", "-C", into}, pr, io.Discard)
	pr.CloseWithError(err)
	// The stream's reader swallows an error on our side: a tree cut short
	// must not pass for a copy.
	if terr := <-errc; terr != nil && !(err == nil && errors.Is(terr, io.ErrClosedPipe)) {
		return fmt.Errorf("cp: %s: %w", src, terr)
	}
	if err != nil {
		return fmt.Errorf("cp: tar in the container: %w", err)
	}
	return nil
}

// isDir asks the container whether p is a directory.
func (c *cli) isDir(ctx context.Context, id, p string) bool {
	r, err := c.rs.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: []string{"test", "-d", p}, Timeout: 30})
	return err == nil && r.ExitCode == 0
}

// tarTree writes src (file, directory or symlink, not followed) to w as
// name, owned by root.
func tarTree(w io.Writer, src, name string) error {
	tw := tar.NewWriter(w)
	add := func(p string, fi fs.FileInfo, rel string) error {
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			var err error
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		if !fi.Mode().IsRegular() && !fi.IsDir() && link == "" {
			fmt.Fprintf(os.Stderr, "hyperctl cp: skipping %s (not a file, directory or symlink)\n", p)
			return nil
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		h.Name, h.Uid, h.Gid, h.Uname, h.Gname = rel, 0, 0, "", ""
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			if _, err := io.Copy(tw, f); err != nil {
				return err
			}
		}
		return nil
	}
	// Walk takes a file or symlink at src as itself, unfollowed.
	err := filepath.Walk(src, func(p string, fi fs.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		return add(p, fi, path.Join(name, filepath.ToSlash(rel)))
	})
	if err != nil {
		return err
	}
	return tw.Close()
}
