package main

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestUntar(t *testing.T) {
	type entry struct {
		name, body, link string
		typ              byte
		mode             int64
	}
	for _, tc := range []struct {
		name      string
		entries   []entry
		wantErr   string
		wantFiles map[string]string // path -> content, "->target" for links
		wantMode  map[string]os.FileMode
	}{
		{name: "tree", entries: []entry{
			{name: "old/", typ: tar.TypeDir, mode: 0o755},
			{name: "old/a", body: "A", typ: tar.TypeReg, mode: 0o644},
			{name: "old/sub/b", body: "B", typ: tar.TypeReg, mode: 0o600},
			{name: "old/l", link: "/etc/passwd", typ: tar.TypeSymlink},
		}, wantFiles: map[string]string{"old/a": "A", "old/sub/b": "B", "old/l": "->/etc/passwd"}},
		{name: "entry outside the source refused", entries: []entry{
			{name: "old/", typ: tar.TypeDir, mode: 0o755},
			{name: ".bashrc", body: "x", typ: tar.TypeReg, mode: 0o644},
		}, wantErr: "not under"},
		{name: "write through an inner link refused", entries: []entry{
			{name: "old/", typ: tar.TypeDir, mode: 0o755},
			{name: "old/up", link: "..", typ: tar.TypeSymlink},
			{name: "old/up/evil", body: "x", typ: tar.TypeReg, mode: 0o644},
		}, wantErr: "not a directory"},
		{name: "directory over an inner link refused", entries: []entry{
			{name: "old/", typ: tar.TypeDir, mode: 0o755},
			{name: "old/d", link: ".", typ: tar.TypeSymlink},
			{name: "old/d/", typ: tar.TypeDir, mode: 0o777},
		}, wantErr: "not a directory"},
		{name: "set-id bits dropped", entries: []entry{
			{name: "old", body: "x", typ: tar.TypeReg, mode: 0o4755 | 0o2000},
		}, wantFiles: map[string]string{"old": "x"}, wantMode: map[string]os.FileMode{"old": 0o755}},
		{name: "dot-dot refused", entries: []entry{{name: "../evil", body: "x", typ: tar.TypeReg, mode: 0o644}}, wantErr: "unsafe name"},
		{name: "absolute refused", entries: []entry{{name: "/evil", body: "x", typ: tar.TypeReg, mode: 0o644}}, wantErr: "unsafe name"},
		{name: "nested dot-dot refused", entries: []entry{{name: "old/../../evil", body: "x", typ: tar.TypeReg, mode: 0o644}}, wantErr: "unsafe name"},
		{name: "write through the top link refused", entries: []entry{
			{name: "old", link: "..", typ: tar.TypeSymlink},
			{name: "old/evil", body: "x", typ: tar.TypeReg, mode: 0o644},
		}, wantErr: "not a directory"},
		{name: "empty", wantErr: "sent nothing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			for _, e := range tc.entries {
				tw.WriteHeader(&tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Size: int64(len(e.body)), Linkname: e.link})
				tw.Write([]byte(e.body))
			}
			tw.Close()
			parent := t.TempDir()
			dir := filepath.Join(parent, "dst")
			os.Mkdir(dir, 0o755)
			root, err := os.OpenRoot(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer root.Close()
			err = untar(root, &buf, "old")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("untar = %v, want %q", err, tc.wantErr)
				}
				for _, p := range []string{filepath.Join(parent, "evil"), filepath.Join(dir, "evil"), filepath.Join(dir, ".bashrc")} {
					if _, err := os.Lstat(p); err == nil {
						t.Fatalf("%s was written outside the source's tree", p)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for p, want := range tc.wantFiles {
				full := filepath.Join(dir, p)
				if target, ok := strings.CutPrefix(want, "->"); ok {
					if got, err := os.Readlink(full); err != nil || got != target {
						t.Errorf("%s links to %q (%v), want %q", p, got, err, target)
					}
					continue
				}
				if got, err := os.ReadFile(full); err != nil || string(got) != want {
					t.Errorf("%s = %q (%v), want %q", p, got, err, want)
				}
			}
			for p, want := range tc.wantMode {
				if fi, err := os.Stat(filepath.Join(dir, p)); err != nil || fi.Mode() != want {
					t.Errorf("%s mode %v (%v), want %v", p, fi.Mode(), err, want)
				}
			}
		})
	}
}

func TestSplitCopyArg(t *testing.T) {
	for _, tc := range []struct {
		arg, ref, path string
		in             bool
	}{
		{"web:/etc/hosts", "web", "/etc/hosts", true},
		{"/tmp/a:b", "", "/tmp/a:b", false},
		{"./a:b", "", "./a:b", false},
		{"local", "", "local", false},
		{":x", "", ":x", false},
	} {
		ref, p, in := splitCopyArg(tc.arg)
		if ref != tc.ref || p != tc.path || in != tc.in {
			t.Errorf("splitCopyArg(%q) = %q %q %v", tc.arg, ref, p, in)
		}
	}
}
