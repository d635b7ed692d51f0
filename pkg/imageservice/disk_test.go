package imageservice

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/hyperlet/hyperlet/pkg/config"
	"github.com/hyperlet/hyperlet/pkg/imageservice/imagetest"
	"github.com/hyperlet/hyperlet/pkg/imageservice/unpack"
)

func tarLayer(t *testing.T, hs ...*tar.Header) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hs {
		data := []byte(h.Linkname)
		if h.Typeflag == tar.TypeReg {
			data = []byte(h.Uname)
			h.Size, h.Uname = int64(len(data)), ""
		}
		tw.WriteHeader(h)
		if h.Typeflag == tar.TypeReg {
			tw.Write(data)
		}
	}
	tw.Close()
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// file is a regular file entry; its content rides in Uname until written.
func file(name, content string, uid int, mode int64) *tar.Header {
	return &tar.Header{Name: name, Typeflag: tar.TypeReg, Uname: content, Uid: uid, Gid: uid, Mode: mode}
}

// TestImageDisk pulls a two-layer image from a real registry, builds its
// EROFS disk, and reads it back with fsck.erofs: contents, whiteouts across
// layers, ownership, modes and symlinks as the layers say. It also checks
// that concurrent callers share one build, that a pinned image cannot be
// removed, and that removal deletes the disk.
func TestImageDisk(t *testing.T) {
	r := imagetest.StartRegistry(t, "", "")
	mtime := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	dated := file("etc/dated", "old\n", 0, 0o644)
	dated.ModTime = mtime
	capped := file("bin/ping", "ping\n", 0, 0o755)
	capped.PAXRecords = map[string]string{
		"SCHILY.xattr.security.capability": string(capNetRaw),
		"SCHILY.xattr.user.note":           "hi",
	}
	lower := tarLayer(t,
		dated, capped,
		&tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755},
		file("etc/keep", "kept\n", 0, 0o644),
		file("etc/gone", "whited out\n", 0, 0o644),
		&tar.Header{Name: "home/app/", Typeflag: tar.TypeDir, Mode: 0o700, Uid: 1000, Gid: 1000},
		file("home/app/secret", "mine\n", 1000, 0o600),
		file("bin/tool", "#!/bin/sh\n", 0, 0o4755),
	)
	upper := tarLayer(t,
		&tar.Header{Name: "etc/.wh.gone", Typeflag: tar.TypeReg},
		&tar.Header{Name: "etc/link", Typeflag: tar.TypeSymlink, Linkname: "/etc/keep"},
	)
	img, err := mutate.AppendLayers(empty.Image, lower, upper)
	if err != nil {
		t.Fatal(err)
	}
	r.Push(t, "hyperlet/disk:1", img)
	s := newService(t, mirrorConfig(r))
	ctx := context.Background()
	pulled, err := s.Pull(ctx, "registry.test/hyperlet/disk:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := s.Usage()

	var wg sync.WaitGroup
	paths := make([]string, 4)
	errs := make([]error, 4)
	for i := range paths {
		wg.Add(1)
		go func() { defer wg.Done(); paths[i], errs[i] = s.Disk(ctx, pulled.ID.String()) }()
	}
	wg.Wait()
	for i := range paths {
		if errs[i] != nil || paths[i] != paths[0] {
			t.Fatalf("Disk: %q %v", paths[i], errs[i])
		}
	}
	after, _ := s.Usage()
	if after.Bytes <= before.Bytes {
		t.Errorf("ImageFsInfo does not count the disk: %d -> %d", before.Bytes, after.Bytes)
	}

	// Read the disk as the guest will: mounted by the kernel. Where the host
	// kernel cannot (no erofs or loop), fsck.erofs extracts it instead, but
	// that drops setuid bits, so that one check is then left out (logged).
	out := filepath.Join(t.TempDir(), "x")
	os.Mkdir(out, 0o755)
	mounted := exec.Command("mount", "-t", "erofs", "-o", "loop,ro", paths[0], out).Run() == nil
	if mounted {
		t.Cleanup(func() { exec.Command("umount", out).Run() })
	} else {
		t.Log("the host kernel cannot mount EROFS; reading the disk with fsck.erofs --extract")
		os.Remove(out)
		if b, err := exec.Command("fsck.erofs", "--extract="+out, paths[0]).CombinedOutput(); err != nil {
			t.Fatalf("fsck.erofs: %v\n%s", err, b)
		}
	}
	read := func(p string) string { b, _ := os.ReadFile(filepath.Join(out, p)); return string(b) }
	if read("etc/keep") != "kept\n" || read("home/app/secret") != "mine\n" {
		t.Errorf("contents: %q %q", read("etc/keep"), read("home/app/secret"))
	}
	if _, err := os.Lstat(filepath.Join(out, "etc/gone")); !os.IsNotExist(err) {
		t.Errorf("whited-out file present: %v", err)
	}
	if l, _ := os.Readlink(filepath.Join(out, "etc/link")); l != "/etc/keep" {
		t.Errorf("symlink = %q", l)
	}
	var st syscall.Stat_t
	syscall.Stat(filepath.Join(out, "home/app/secret"), &st)
	if st.Uid != 1000 || st.Mode&0o777 != 0o600 {
		t.Errorf("home/app/secret: uid %d mode %o", st.Uid, st.Mode&0o7777)
	}
	syscall.Stat(filepath.Join(out, "bin/tool"), &st)
	if mounted && st.Mode&0o7777 != 0o4755 {
		t.Errorf("bin/tool mode %o", st.Mode&0o7777)
	}
	if fi, err := os.Lstat(filepath.Join(out, "etc/dated")); err != nil || !fi.ModTime().Equal(mtime) {
		t.Errorf("etc/dated mtime: %v, %v; want %v", fi.ModTime(), err, mtime)
	}
	if mounted { // fsck.erofs --extract does not restore xattrs
		for name, want := range map[string]string{"security.capability": string(capNetRaw), "user.note": "hi"} {
			buf := make([]byte, 64)
			n, err := unix.Lgetxattr(filepath.Join(out, "bin/ping"), name, buf)
			if err != nil || string(buf[:max(n, 0)]) != want {
				t.Errorf("bin/ping %s = %q, %v", name, buf[:max(n, 0)], err)
			}
		}
	}

	release, err := s.Acquire(pulled.ID.String())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(pulled.ID.String()); !errors.Is(err, ErrInUse) {
		t.Errorf("remove of a pinned image: %v", err)
	}
	release()
	if mounted {
		exec.Command("umount", out).Run()
	}
	if err := s.Remove(pulled.ID.String()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(paths[0]); !os.IsNotExist(err) {
		t.Errorf("disk left after removal: %v", err)
	}
	if _, err := s.Acquire(pulled.ID.String()); !errors.Is(err, ErrNotFound) {
		t.Errorf("Acquire of a removed image: %v", err)
	}
}

// capNetRaw is a VFS_CAP_REVISION_2 security.capability value granting
// CAP_NET_RAW (bit 13) as permitted.
var capNetRaw = []byte{1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

// TestDiskCrashLeftovers: reopening the service removes an interrupted
// build and the disk of an image whose record is gone, and keeps the rest.
func TestDiskCrashLeftovers(t *testing.T) {
	root := t.TempDir()
	s, err := New(root, config.Registry{})
	if err != nil {
		t.Fatal(err)
	}
	live := &Image{ID: digest.FromString("live"), RepoTags: []string{"docker.io/library/live:1"}}
	if _, err := s.record(live); err != nil {
		t.Fatal(err)
	}
	s.Close()
	orphan := filepath.Join(root, "disks", digest.FromString("gone").Encoded()+".erofs")
	build := filepath.Join(root, "disks", ".build-123", "root")
	os.MkdirAll(build, 0o700)
	os.WriteFile(orphan, []byte("x"), 0o600)
	os.WriteFile(s.diskPath(live.ID), []byte("x"), 0o600)
	s, err = New(root, config.Registry{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ents, _ := os.ReadDir(s.diskDir())
	if len(ents) != 1 || ents[0].Name() != live.ID.Encoded()+".erofs" {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("disks after reopening: %v, want only the live image's", names)
	}
}

// TestHostileImageDisk: an image whose layer writes through a symlink out
// of the tree fails to build, and nothing is written outside.
func TestHostileImageDisk(t *testing.T) {
	r := imagetest.StartRegistry(t, "", "")
	// A symlink out of the tree is followed inside it, as in the container.
	escape := tarLayer(t,
		&tar.Header{Name: "escape", Typeflag: tar.TypeSymlink, Linkname: "../../../../../../tmp"},
		file("escape/hyperlet-pwned", "x", 0, 0o644),
	)
	// A .. name is refused: the image gets no disk.
	traversal := tarLayer(t, file("../../../../../../tmp/hyperlet-pwned2", "x", 0, 0o644))
	img1, _ := mutate.AppendLayers(empty.Image, escape)
	img2, _ := mutate.AppendLayers(empty.Image, traversal)
	r.Push(t, "hyperlet/escape:1", img1)
	r.Push(t, "hyperlet/traversal:1", img2)
	s := newService(t, mirrorConfig(r))
	ctx := context.Background()
	p1, err := s.Pull(ctx, "registry.test/hyperlet/escape:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Disk(ctx, p1.ID.String()); err != nil {
		t.Errorf("contained symlink: %v", err)
	}
	p2, err := s.Pull(ctx, "registry.test/hyperlet/traversal:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Disk(ctx, p2.ID.String()); !errors.Is(err, unpack.ErrUnsafeLayer) {
		t.Errorf("traversal image disk: %v", err)
	}
	for _, f := range []string{"/tmp/hyperlet-pwned", "/tmp/hyperlet-pwned2"} {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("hostile layer wrote %s", f)
		}
	}
	if _, err := os.Stat(s.diskPath(p2.ID)); !os.IsNotExist(err) {
		t.Errorf("failed build left a disk: %v", err)
	}
	ents, _ := os.ReadDir(s.diskDir())
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".build-") {
			t.Errorf("failed build left %s", e.Name())
		}
	}
}
