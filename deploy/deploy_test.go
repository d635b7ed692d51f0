// Package deploy holds the node installation files; its tests check them.
package deploy

import (
	"bytes"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// TestManifests decodes every manifest strictly with the k8s.io/api types.
func TestManifests(t *testing.T) {
	b, err := os.ReadFile("kubernetes/hyperlet-deploy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var ds *appsv1.DaemonSet
	kinds := map[string]bool{}
	for _, doc := range strings.Split(string(b), "\n---\n") {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatal(err)
		}
		var obj any
		switch meta.Kind {
		case "Namespace":
			obj = &corev1.Namespace{}
		case "ServiceAccount":
			obj = &corev1.ServiceAccount{}
		case "DaemonSet":
			ds = &appsv1.DaemonSet{}
			obj = ds
		default:
			t.Fatalf("unexpected kind %q", meta.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Fatalf("%s: %v", meta.Kind, err)
		}
		kinds[meta.Kind] = true
	}
	if len(kinds) != 3 || ds == nil {
		t.Fatalf("kinds %v", kinds)
	}
	spec := ds.Spec.Template.Spec
	c := spec.Containers[0]
	if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged {
		t.Error("installer is not privileged")
	}
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || !strings.Contains(strings.Join(c.Lifecycle.PreStop.Exec.Command, " "), "uninstall") {
		t.Error("no uninstall on delete")
	}
	if spec.Volumes[0].HostPath == nil || spec.Volumes[0].HostPath.Path != "/" || c.VolumeMounts[0].MountPath != "/host" {
		t.Error("host root not mounted at /host")
	}
	if ds.Spec.Selector.MatchLabels["app.kubernetes.io/name"] != ds.Spec.Template.Labels["app.kubernetes.io/name"] {
		t.Error("selector does not match the template")
	}
}

func files(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(root, p)
			out = append(out, rel)
		}
		return nil
	})
	return out
}

// fakePayload is an installer payload of placeholder files.
func fakePayload(t *testing.T) string {
	payload := t.TempDir()
	for _, f := range []string{"bin/hyperlet", "bin/hyperctl", "share/vmlinux", "share/initrd.img"} {
		os.MkdirAll(filepath.Join(payload, filepath.Dir(f)), 0o755)
		os.WriteFile(filepath.Join(payload, f), []byte(f), 0o644)
	}
	return payload
}

// installer runs install.sh into root, leaving systemd alone, and returns
// its output; a failure fails the test.
func installer(t *testing.T, root string) func(args ...string) string {
	return func(args ...string) string {
		t.Helper()
		cmd := exec.Command("./install.sh", args...)
		cmd.Env = append(os.Environ(), "HOST_ROOT="+root, "SYSTEMCTL=none")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("install.sh %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
}

// TestInstallUninstall installs into a scratch root twice (idempotent),
// keeps an edited config across reinstalls, and removes everything it put
// there on uninstall (--purge: the config too).
func TestInstallUninstall(t *testing.T) {
	payload := fakePayload(t)
	root := t.TempDir()
	run := installer(t, root)
	run("install", "--payload", payload)
	out := run("install", "--payload", payload)
	if !strings.Contains(out, "would run: systemctl enable --now hyperlet.service") {
		t.Errorf("install does not enable the unit:\n%s", out)
	}
	want := []string{"etc/hyperlet/config.toml", "etc/systemd/system/hyperlet.service", "opt/hyperlet/.installed",
		"opt/hyperlet/bin/hyperctl", "opt/hyperlet/bin/hyperlet", "opt/hyperlet/share/initrd.img", "opt/hyperlet/share/vmlinux"}
	if got := files(t, root); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("installed %v, want %v", got, want)
	}
	if fi, _ := os.Stat(filepath.Join(root, "opt/hyperlet/bin/hyperlet")); fi.Mode().Perm() != 0o755 {
		t.Errorf("hyperlet mode %v", fi.Mode())
	}
	cfg := filepath.Join(root, "etc/hyperlet/config.toml")
	if b, _ := os.ReadFile(cfg); !bytes.Contains(b, []byte(`kernel = "/opt/hyperlet/share/vmlinux"`)) {
		t.Errorf("config: %s", b)
	}
	os.WriteFile(cfg, []byte("# edited\n"), 0o644)
	run("install", "--payload", payload)
	if b, _ := os.ReadFile(cfg); string(b) != "# edited\n" {
		t.Error("reinstall overwrote the config")
	}
	run("uninstall")
	if got := files(t, root); strings.Join(got, ",") != "etc/hyperlet/config.toml" {
		t.Errorf("after uninstall: %v", got)
	}
	run("uninstall", "--purge")
	run("uninstall") // again: nothing to do, no error
	if got := files(t, root); len(got) != 0 {
		t.Errorf("after purge: %v", got)
	}
}

// TestInstallerImage builds the installer image archive without a Docker
// daemon and checks what it carries.
func TestInstallerImage(t *testing.T) {
	bins := t.TempDir()
	for _, f := range []string{"hyperlet", "hyperctl", "vmlinux", "initrd.img"} {
		os.WriteFile(filepath.Join(bins, f), []byte(f), 0o644)
	}
	out := filepath.Join(t.TempDir(), "installer.tar")
	cmd := exec.Command("go", "run", "./hack/installer-image", "-o", out, "-bin", bins)
	cmd.Dir = ".."
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("installer-image: %v\n%s", err, b)
	}
	img, err := tarball.ImageFromPath(out, nil)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil || strings.Join(cf.Config.Cmd, " ") != "/installer/install.sh install" {
		t.Fatalf("config %v %v", cf, err)
	}
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := newTarNames(t, rc)
	for _, want := range []string{"installer/install.sh", "installer/bin/hyperlet", "installer/share/initrd.img", "installer/systemd/hyperlet.service", "bin/nsenter", "bin/sh"} {
		if !tr[want] {
			t.Errorf("image lacks %s", want)
		}
	}
}

// TestInstallHostRuntime: the node's containerd is reused when it serves
// its socket; a node with only the containerd binary gets
// hyperlet-containerd.service and a config naming its socket; a node with
// none is warned about. Uninstall removes what install added.
func TestInstallHostRuntime(t *testing.T) {
	payload := fakePayload(t)
	for _, tc := range []struct {
		name      string
		setup     func(t *testing.T, root string)
		endpoint  string
		ownUnit   bool
		wantInOut string
	}{
		{"no containerd", func(*testing.T, string) {}, "/run/containerd/containerd.sock", false, "no containerd on the node"},
		{"the node's containerd", func(t *testing.T, root string) {
			os.MkdirAll(filepath.Join(root, "run/containerd"), 0o755)
			l, err := net.Listen("unix", filepath.Join(root, "run/containerd/containerd.sock"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
		}, "/run/containerd/containerd.sock", false, "the node's containerd"},
		{"a containerd binary only", func(t *testing.T, root string) {
			os.MkdirAll(filepath.Join(root, "usr/local/bin"), 0o755)
			os.WriteFile(filepath.Join(root, "usr/local/bin/containerd"), []byte("#!/bin/sh\n"), 0o755)
		}, "/run/hyperlet/containerd/containerd.sock", true, "hyperlet-containerd.service"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			tc.setup(t, root)
			run := installer(t, root)
			out := run("install", "--payload", payload)
			if !strings.Contains(out, tc.wantInOut) {
				t.Errorf("install output lacks %q:\n%s", tc.wantInOut, out)
			}
			cfg, _ := os.ReadFile(filepath.Join(root, "etc/hyperlet/config.toml"))
			if !strings.Contains(string(cfg), `endpoint = "`+tc.endpoint+`"`) {
				t.Errorf("config does not name %s:\n%s", tc.endpoint, cfg)
			}
			unit, err := os.ReadFile(filepath.Join(root, "etc/systemd/system/hyperlet-containerd.service"))
			if (err == nil) != tc.ownUnit {
				t.Fatalf("hyperlet-containerd.service installed: %v, want %v", err == nil, tc.ownUnit)
			}
			if tc.ownUnit {
				if !strings.Contains(string(unit), "ExecStart=/usr/local/bin/containerd --config /etc/hyperlet/containerd.toml") {
					t.Errorf("unit does not run the node's binary:\n%s", unit)
				}
				if ccfg, _ := os.ReadFile(filepath.Join(root, "etc/hyperlet/containerd.toml")); !strings.Contains(string(ccfg), `address = "/run/hyperlet/containerd/containerd.sock"`) {
					t.Errorf("containerd config:\n%s", ccfg)
				}
				if !strings.Contains(out, "would run: systemctl enable --now hyperlet-containerd.service") {
					t.Errorf("install does not enable hyperlet-containerd:\n%s", out)
				}
			}
			run("uninstall", "--purge")
			// What the test put there stays.
			got := slices.DeleteFunc(files(t, root), func(f string) bool {
				return f == "usr/local/bin/containerd" || f == "run/containerd/containerd.sock"
			})
			if len(got) > 0 {
				t.Errorf("after purge: %v", got)
			}
		})
	}
}
