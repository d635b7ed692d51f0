package imagetest

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Passwd and Group are the busybox test image's users and groups: root,
// app (1000, also in group extra 2000) and nobody.
const (
	Passwd = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
	Group  = "root:x:0:\napp:x:1000:\nextra:x:2000:app\nnogroup:x:65534:\n"
)

// BusyboxImage is a small but real userland built from Debian's
// busybox-static: /bin/busybox with every applet linked, users and groups,
// /tmp and a home for app. Its command is sh.
func BusyboxImage(t *testing.T) v1.Image {
	t.Helper()
	img, err := Busybox()
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// Busybox builds the busybox test image (see BusyboxImage).
func Busybox() (v1.Image, error) {
	bin, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return nil, fmt.Errorf("test images need busybox-static (/bin/busybox): %w", err)
	}
	out, err := exec.Command("/bin/busybox", "--list").Output()
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dir := func(name string, mode int64, uid int) {
		tw.WriteHeader(&tar.Header{Name: name + "/", Mode: mode, Typeflag: tar.TypeDir, Uid: uid, Gid: uid})
	}
	file := func(name string, mode int64, data []byte) {
		tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(data)), Typeflag: tar.TypeReg})
		tw.Write(data)
	}
	for _, d := range []string{"bin", "etc", "root", "proc", "sys", "dev", "home", "var", "run"} {
		dir(d, 0o755, 0)
	}
	dir("tmp", 0o1777, 0)
	dir("home/app", 0o755, 1000)
	file("bin/busybox", 0o755, bin)
	for _, a := range strings.Fields(string(out)) {
		if a != "busybox" {
			tw.WriteHeader(&tar.Header{Name: "bin/" + a, Linkname: "busybox", Typeflag: tar.TypeSymlink, Mode: 0o777})
		}
	}
	file("etc/passwd", 0o644, []byte(Passwd))
	file("etc/group", 0o644, []byte(Group))
	tw.Close()
	b := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Cmd = []string{"sh"}
	cf.Config.Env = []string{"PATH=/bin", "IMAGE_ENV=from-image"}
	return mutate.ConfigFile(img, cf)
}
