package testcontainerd

import (
	"os"
	"os/exec"
	"testing"

	"github.com/BurntSushi/toml"
)

// The written configuration is TOML containerd can read, and names gVisor's
// runtime handler only when asked to.
func TestWrite(t *testing.T) {
	if _, err := exec.LookPath("runc"); err != nil {
		t.Fatalf("runc (Debian package runc, installed by hack/install-deps.sh): %v", err)
	}
	for _, tc := range []struct {
		name       string
		shim, conf string
	}{
		{name: "runc only"},
		{name: "with gVisor", shim: "/opt/gvisor/containerd-shim-runsc-v1", conf: "/etc/runsc.toml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Config{Dir: t.TempDir(), SandboxImage: "pause:1", CNIConfDir: "/cni",
				Mirrors: map[string]string{"docker.io": "127.0.0.1:5050"}, GVisorShim: tc.shim, GVisorConfig: tc.conf}
			path, err := c.Write()
			if err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(path)
			var doc struct {
				Plugins map[string]struct {
					SandboxImage string `toml:"sandbox_image"`
					Containerd   struct {
						Runtimes map[string]struct {
							RuntimeType string         `toml:"runtime_type"`
							Options     map[string]any `toml:"options"`
						} `toml:"runtimes"`
					} `toml:"containerd"`
				} `toml:"plugins"`
			}
			if _, err := toml.Decode(string(b), &doc); err != nil {
				t.Fatalf("not TOML: %v\n%s", err, b)
			}
			cri := doc.Plugins["io.containerd.grpc.v1.cri"]
			if cri.SandboxImage != "pause:1" || cri.Containerd.Runtimes["runc"].RuntimeType != "io.containerd.runc.v2" {
				t.Errorf("CRI plugin section: %+v", cri)
			}
			g, ok := cri.Containerd.Runtimes["runsc"]
			if ok != (tc.shim != "") {
				t.Fatalf("runsc handler present %v, want %v:\n%s", ok, tc.shim != "", b)
			}
			if ok && (g.RuntimeType != tc.shim || g.Options["ConfigPath"] != tc.conf || g.Options["TypeUrl"] != "io.containerd.runsc.v1.options") {
				t.Errorf("runsc handler: %+v", g)
			}
		})
	}
}
