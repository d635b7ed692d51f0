package unpack

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

type entry struct {
	name, link, data string
	typ              byte
	mode             int64
	uid, gid         int
	pax              map[string]string
	size             int64 // overrides len(data) in the header
}

func layer(t *testing.T, entries ...entry) *bytes.Reader {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid,
			PAXRecords: e.pax, Format: tar.FormatPAX}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.data))
		}
		if e.size > 0 {
			h.Size = e.size
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg && e.size == 0 {
			tw.Write([]byte(e.data))
		}
	}
	if err := tw.Flush(); err != nil && !strings.Contains(err.Error(), "missed writing") {
		t.Fatal(err)
	}
	return bytes.NewReader(buf.Bytes())
}

// sandbox is a target directory with a sibling "outside" directory that
// holds a file; a hostile layer must leave "outside" exactly as it was.
type sandbox struct {
	t       *testing.T
	dir     string
	target  string
	outside string
	root    *os.Root
}

func newSandbox(t *testing.T) *sandbox {
	dir := t.TempDir()
	s := &sandbox{t: t, dir: dir, target: filepath.Join(dir, "target"), outside: filepath.Join(dir, "outside")}
	os.Mkdir(s.target, 0o755)
	os.Mkdir(s.outside, 0o755)
	os.WriteFile(filepath.Join(s.outside, "secret"), []byte("keep"), 0o600)
	root, err := os.OpenRoot(s.target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	s.root = root
	return s
}

func (s *sandbox) apply(entries ...entry) error {
	_, err := Apply(s.root, layer(s.t, entries...), Options{MaxFileSize: 1 << 20, MaxTotalBytes: 2 << 20})
	return err
}

// outsideUntouched checks the sibling directory and the parent.
func (s *sandbox) outsideUntouched() {
	s.t.Helper()
	ents, _ := os.ReadDir(s.outside)
	if len(ents) != 1 || ents[0].Name() != "secret" {
		s.t.Errorf("outside directory changed: %v", ents)
	}
	if b, _ := os.ReadFile(filepath.Join(s.outside, "secret")); string(b) != "keep" {
		s.t.Errorf("outside file changed: %q", b)
	}
	top, _ := os.ReadDir(s.dir)
	var names []string
	for _, e := range top {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	if strings.Join(names, ",") != "outside,target" {
		s.t.Errorf("written next to the target: %v", names)
	}
}

// Symlinks in a layer are resolved as the container will see them, inside
// the root: writes through them are contained, not refused.
func TestHostileLayers(t *testing.T) {
	tests := []struct {
		name    string
		layers  [][]entry
		wantErr bool
	}{
		{"dot-dot traversal", [][]entry{{{name: "../outside/secret", data: "pwned"}}}, true},
		{"dot-dot in the middle", [][]entry{{{name: "a/../../outside/x", data: "pwned"}}}, true},
		{"absolute path stays inside", [][]entry{{{name: "/outside/secret", data: "inside"}}}, false},
		{"write through absolute symlink", [][]entry{{
			{name: "link", typ: tar.TypeSymlink, link: "/"},
			{name: "link/outside/secret", data: "pwned"},
		}}, false},
		{"write through escaping relative symlink", [][]entry{{
			{name: "link", typ: tar.TypeSymlink, link: "../outside"},
			{name: "link/secret", data: "pwned"},
		}}, false},
		{"symlink chain", [][]entry{{
			{name: "a", typ: tar.TypeSymlink, link: "b"},
			{name: "b", typ: tar.TypeSymlink, link: "../outside"},
			{name: "a/new", data: "pwned"},
		}}, false},
		{"symlink in a lower layer", [][]entry{
			{{name: "etc", typ: tar.TypeSymlink, link: "../outside"}},
			{{name: "etc/secret", data: "pwned"}},
		}, false},
		{"hardlink to outside", [][]entry{{{name: "h", typ: tar.TypeLink, link: "../outside/secret"}}}, true},
		// An absolute link name is relative to the layer root.
		{"hardlink to absolute path stays inside", [][]entry{{
			{name: "etc/passwd", data: "in-image"},
			{name: "h", typ: tar.TypeLink, link: "/etc/passwd"},
		}}, false},
		{"hardlink through symlink", [][]entry{{
			{name: "outside/secret", data: "in-root"},
			{name: "l", typ: tar.TypeSymlink, link: "../outside"},
			{name: "h", typ: tar.TypeLink, link: "l/secret"},
		}}, false},
		// Debian images have var/run -> /run: later layers write through
		// it, into the root's own /run.
		{"absolute directory symlink", [][]entry{
			{{name: "run/", typ: tar.TypeDir}, {name: "var/run", typ: tar.TypeSymlink, link: "/run"}},
			{{name: "var/run/app.pid", data: "1"}},
		}, false},
		{"whiteout through symlink", [][]entry{{
			{name: "l", typ: tar.TypeSymlink, link: "../outside"},
			{name: "l/.wh.secret"},
		}}, false},
		{"whiteout with dot-dot", [][]entry{{{name: "../outside/.wh.secret"}}}, true},
		// Names that would white out the directory itself or its parent.
		{"whiteout of the directory itself", [][]entry{{{name: "d/f", data: "x"}, {name: "d/.wh."}}}, true},
		{"whiteout named dot", [][]entry{{{name: "d/f", data: "x"}, {name: "d/.wh.."}}}, true},
		{"whiteout named dot-dot", [][]entry{{{name: "d/e/f", data: "x"}, {name: "d/e/.wh..."}}}, true},
		{"top-level whiteout named dot-dot", [][]entry{{{name: ".wh..."}}}, true},
		{"opaque through symlink", [][]entry{{
			{name: "l", typ: tar.TypeSymlink, link: "../outside"},
			{name: "l/.wh..wh..opq"},
		}}, false},
		{"device nodes are skipped", [][]entry{{
			{name: "dev/sda", typ: tar.TypeBlock},
			{name: "dev/mem", typ: tar.TypeChar},
			{name: "fifo", typ: tar.TypeFifo},
		}}, false},
		{"huge file", [][]entry{{{name: "big", size: 2 << 20}}}, true},
		{"too many bytes", [][]entry{{
			{name: "a", data: strings.Repeat("x", 900<<10)},
			{name: "b", data: strings.Repeat("x", 900<<10)},
			{name: "c", data: strings.Repeat("x", 900<<10)},
		}}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newSandbox(t)
			var err error
			for _, l := range tc.layers {
				if err = s.apply(l...); err != nil {
					break
				}
			}
			if (err != nil) != tc.wantErr {
				t.Errorf("err = %v, want error %v", err, tc.wantErr)
			}
			if tc.wantErr && err != nil && !errors.Is(err, ErrUnsafeLayer) {
				t.Errorf("error is not ErrUnsafeLayer: %v", err)
			}
			s.outsideUntouched()
			// Nothing in the target may be a device node.
			filepath.Walk(s.target, func(p string, fi os.FileInfo, err error) error {
				if err == nil && fi.Mode()&(os.ModeDevice|os.ModeNamedPipe) != 0 {
					t.Errorf("device or FIFO created: %s", p)
				}
				return nil
			})
		})
	}
}

func TestLayerSemantics(t *testing.T) {
	s := newSandbox(t)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.apply(
		entry{name: "etc/", typ: tar.TypeDir, mode: 0o755},
		entry{name: "etc/keep", data: "lower"},
		entry{name: "etc/gone", data: "lower"},
		entry{name: "opq/", typ: tar.TypeDir, mode: 0o755},
		entry{name: "opq/lower", data: "lower"},
		entry{name: "opq/sub/lower", data: "lower"},
		entry{name: "opq/merged/lower", data: "lower"},
		entry{name: "bin/su", data: "su", mode: 0o4755, uid: 0, gid: 0},
		entry{name: "home/app/", typ: tar.TypeDir, mode: 0o750, uid: 1000, gid: 1000},
		entry{name: "home/app/f", data: "mine", uid: 1000, gid: 1000, mode: 0o600},
		entry{name: "tmp/", typ: tar.TypeDir, mode: 0o1777},
		entry{name: "file-then-dir", data: "x"},
		entry{name: "x", data: "xattr", pax: map[string]string{"SCHILY.xattr.user.note": "hi", "SCHILY.xattr.trusted.secret": "no"}},
	))
	must(s.apply(
		entry{name: "etc/.wh.gone"},
		entry{name: "opq/upper", data: "upper"},
		// Added before the marker, under a parent made implicitly and under
		// a directory merged with the lower one: both stay, the lower
		// entries next to them go.
		entry{name: "opq/sub/new", data: "new"},
		entry{name: "opq/merged/", typ: tar.TypeDir, mode: 0o755},
		entry{name: "opq/.wh..wh..opq"},
		entry{name: "opq/merged/new", data: "new"},
		entry{name: "etc/link", typ: tar.TypeSymlink, link: "/etc/keep"},
		entry{name: "etc/hard", typ: tar.TypeLink, link: "etc/keep"},
		entry{name: "file-then-dir/", typ: tar.TypeDir, mode: 0o755},
		entry{name: "file-then-dir/inner", data: "in"},
	))
	check := func(p, want string) {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(s.target, p))
		if want == "" {
			if !os.IsNotExist(err) {
				t.Errorf("%s exists (%v)", p, err)
			}
			return
		}
		if string(b) != want {
			t.Errorf("%s = %q, %v; want %q", p, b, err, want)
		}
	}
	check("etc/keep", "lower")
	check("etc/gone", "")
	check("opq/lower", "")
	check("opq/upper", "upper")
	check("opq/sub/new", "new")
	check("opq/sub/lower", "")
	check("opq/merged/new", "new")
	check("opq/merged/lower", "")
	check("file-then-dir/inner", "in")
	check("etc/hard", "lower")
	if l, _ := os.Readlink(filepath.Join(s.target, "etc/link")); l != "/etc/keep" {
		t.Errorf("symlink target %q", l)
	}
	var a, b syscall.Stat_t
	syscall.Stat(filepath.Join(s.target, "etc/keep"), &a)
	syscall.Stat(filepath.Join(s.target, "etc/hard"), &b)
	if a.Ino != b.Ino {
		t.Error("hardlink is a copy")
	}
	fi, _ := os.Stat(filepath.Join(s.target, "bin/su"))
	if fi.Mode()&os.ModeSetuid == 0 || fi.Mode().Perm() != 0o755 {
		t.Errorf("bin/su mode %v", fi.Mode())
	}
	fi, _ = os.Stat(filepath.Join(s.target, "tmp"))
	if fi.Mode()&os.ModeSticky == 0 {
		t.Errorf("tmp mode %v", fi.Mode())
	}
	var st syscall.Stat_t
	syscall.Stat(filepath.Join(s.target, "home/app/f"), &st)
	if st.Uid != 1000 || st.Gid != 1000 {
		t.Errorf("home/app/f owned by %d:%d", st.Uid, st.Gid)
	}
	buf := make([]byte, 16)
	n, err := unix.Getxattr(filepath.Join(s.target, "x"), "user.note", buf)
	if err != nil {
		t.Fatalf("user xattr not set (the test directory's filesystem must support user xattrs): %v", err)
	}
	if string(buf[:n]) != "hi" {
		t.Errorf("user.note = %q", buf[:n])
	}
	if _, err := unix.Getxattr(filepath.Join(s.target, "x"), "trusted.secret", buf); err == nil {
		t.Error("trusted xattr from a layer was set")
	}
	s.outsideUntouched()
}
