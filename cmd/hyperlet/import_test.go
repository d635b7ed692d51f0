package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/hyperlet/hyperlet/pkg/imageservice/imagetest"
)

// TestImport loads a docker save archive, an OCI layout directory and a tar
// of an OCI layout with `hyperlet import`, then checks that a daemon on the
// same root lists them, and that import refuses a root a daemon holds.
func TestImport(t *testing.T) {
	bin := buildDaemon(t)
	dir := t.TempDir()
	bb := imagetest.BusyboxImage(t)
	other := imagetest.Image(t, imagetest.Layer(t, map[string]string{"etc/os-release": "x"}), "other", "")

	saved := filepath.Join(dir, "saved.tar")
	tag, _ := name.NewTag("example.com/app/busybox:saved")
	if err := tarball.WriteToFile(saved, tag, bb); err != nil {
		t.Fatal(err)
	}
	layoutDir := filepath.Join(dir, "layout")
	lp, err := layout.Write(layoutDir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(other); err != nil {
		t.Fatal(err)
	}
	layoutTar := filepath.Join(dir, "layout.tar")
	imagetest.TarTree(t, layoutDir, layoutTar, nil)

	root, state := filepath.Join(dir, "root"), filepath.Join(dir, "state")
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, append([]string{"import", "--config", filepath.Join(dir, "none.toml"), "--root", root, "--state", state}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("hyperlet import %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	if out := run(saved); !strings.Contains(out, "example.com/app/busybox:saved") {
		t.Errorf("docker save import: %s", out)
	}
	if out := run("--tag", "other:dir", layoutDir); !strings.Contains(out, "docker.io/library/other:dir") {
		t.Errorf("layout import: %s", out)
	}
	if out := run("--tag", "other:tar", layoutTar); !strings.Contains(out, "docker.io/library/other:tar") {
		t.Errorf("layout tar import: %s", out)
	}
	cmd := exec.Command(bin, "import", "--root", root, "--state", state, layoutDir)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "no name") {
		t.Errorf("unnamed import: %v %s", err, out)
	}

	d := startDaemonWithConfig(t, bin, dir, filepath.Join(dir, "none.toml"))
	_ = d
	cmd = exec.Command(bin, "import", "--root", d.root, "--state", d.state, "--tag", "x:y", layoutDir)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "in use") {
		t.Errorf("import next to a running daemon: %v %s", err, out)
	}
}
