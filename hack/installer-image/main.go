// Command installer-image builds the hyperlet node installer image (see
// deploy/kubernetes/hyperlet-deploy.yaml) as a docker-save/OCI archive,
// without a Docker daemon: Debian's busybox-static for a shell and nsenter,
// plus /installer with install.sh, the systemd unit, the binaries, the
// guest kernel and the initrd.
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/hyperlet/hyperlet/pkg/imageservice/imagetest"
)

func main() {
	out := flag.String("o", "_output/hyperlet-installer.tar", "output archive")
	tag := flag.String("tag", "ghcr.io/hyperlet/hyperlet-installer:latest", "image name")
	bins := flag.String("bin", "_output", "directory with hyperlet, hyperctl, vmlinux and initrd.img")
	flag.Parse()
	if err := build(*out, *tag, *bins); err != nil {
		fmt.Fprintln(os.Stderr, "installer-image:", err)
		os.Exit(1)
	}
}

func build(out, tagName, bins string) error {
	files := []struct {
		src, dst string
		mode     int64
	}{
		{"deploy/install.sh", "installer/install.sh", 0o755},
		{"deploy/systemd/hyperlet.service", "installer/systemd/hyperlet.service", 0o644},
		{bins + "/hyperlet", "installer/bin/hyperlet", 0o755},
		{bins + "/hyperctl", "installer/bin/hyperctl", 0o755},
		{bins + "/vmlinux", "installer/share/vmlinux", 0o644},
		{bins + "/initrd.img", "installer/share/initrd.img", 0o644},
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range []string{"installer/", "installer/bin/", "installer/share/", "installer/systemd/"} {
		tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755})
	}
	for _, f := range files {
		b, err := os.ReadFile(f.src)
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Name: f.dst, Typeflag: tar.TypeReg, Mode: f.mode, Size: int64(len(b))}); err != nil {
			return err
		}
		tw.Write(b)
	}
	if err := tw.Close(); err != nil {
		return err
	}
	data := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		return err
	}
	base, err := imagetest.Busybox()
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(base, layer)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.Config.Cmd = []string{"/installer/install.sh", "install"}
	cf.Config.Env = []string{"PATH=/bin", "HOST_ROOT=/host"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	tag, err := name.NewTag(tagName)
	if err != nil {
		return err
	}
	if err := tarball.WriteToFile(out, tag, img); err != nil {
		return err
	}
	fmt.Println(out)
	return nil
}
