package unpack

import (
	"archive/tar"
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// FuzzApply feeds arbitrary bytes to the layer unpacker as a hostile image
// would: it must not panic, must not write outside its root, and must not
// leave device nodes.
func FuzzApply(f *testing.F) {
	seed := func(hs ...tar.Header) []byte {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		for _, h := range hs {
			h := h
			body := []byte(nil)
			if h.Typeflag == tar.TypeReg {
				body = []byte("data")
				h.Size = int64(len(body))
			}
			tw.WriteHeader(&h)
			tw.Write(body)
		}
		tw.Close()
		return b.Bytes()
	}
	f.Add(seed(tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}, tar.Header{Name: "etc/passwd", Typeflag: tar.TypeReg, Mode: 0o644}))
	f.Add(seed(tar.Header{Name: "../escape", Typeflag: tar.TypeReg, Mode: 0o644}))
	f.Add(seed(tar.Header{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "/"}, tar.Header{Name: "l/etc/x", Typeflag: tar.TypeReg, Mode: 0o644}))
	f.Add(seed(tar.Header{Name: "h", Typeflag: tar.TypeLink, Linkname: "../../etc/shadow"}))
	f.Add(seed(tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3}))
	f.Add(seed(tar.Header{Name: "a/", Typeflag: tar.TypeDir, Mode: 0o755}, tar.Header{Name: "a/.wh..wh..opq", Typeflag: tar.TypeReg}, tar.Header{Name: ".wh.a", Typeflag: tar.TypeReg}))
	// Each input unpacks into a fresh directory on tmpfs where there is
	// one: removing trees from a disk mounted with discard costs a
	// synchronous discard per inode, which slows fuzzing to a few inputs
	// a second.
	tmp := ""
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		tmp = "/dev/shm"
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		base, err := os.MkdirTemp(tmp, "hyperlet-fuzz-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(base)
		dir := filepath.Join(base, "root")
		os.Mkdir(dir, 0o755)
		root, err := os.OpenRoot(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer root.Close()
		Apply(root, bytes.NewReader(data), Options{MaxFileSize: 1 << 20, MaxTotalBytes: 4 << 20, MaxEntries: 1000})
		ents, _ := os.ReadDir(base)
		if len(ents) != 1 {
			t.Fatalf("unpack wrote beside its root: %v", ents)
		}
		filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
			if err == nil && e.Type()&(fs.ModeDevice|fs.ModeCharDevice|fs.ModeNamedPipe|fs.ModeSocket) != 0 {
				t.Errorf("unpack made %s (%v)", p, e.Type())
			}
			return nil
		})
	})
}
