// Package imagetest runs Debian's docker-registry for tests and builds
// test images with go-containerregistry.
package imagetest

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/crypto/bcrypt"
)

// Registry is Debian's docker-registry, started for one test on loopback.
type Registry struct {
	Host string // 127.0.0.1:port
	Auth authn.Authenticator
}

func StartRegistry(t *testing.T, user, pass string) *Registry {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		t.Fatalf("registry tests need Debian's docker-registry (make deps): %v", err)
	}
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	host := l.Addr().String()
	l.Close()
	authCfg := ""
	r := &Registry{Host: host, Auth: authn.Anonymous}
	if user != "" {
		h, _ := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.MinCost)
		os.WriteFile(filepath.Join(dir, "htpasswd"), []byte(user+":"+string(h)+"\n"), 0o600)
		authCfg = fmt.Sprintf("auth:\n  htpasswd:\n    realm: test\n    path: %s\n", filepath.Join(dir, "htpasswd"))
		r.Auth = &authn.Basic{Username: user, Password: pass}
	}
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n%s", filepath.Join(dir, "data"), host, authCfg)
	cfgPath := filepath.Join(dir, "config.yml")
	os.WriteFile(cfgPath, []byte(cfg), 0o600)
	cmd := exec.Command(bin, "serve", cfgPath)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for i := 0; i < 100; i++ {
		if resp, err := http.Get("http://" + host + "/v2/"); err == nil {
			resp.Body.Close()
			return r
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("docker-registry did not start:\n%s", logs.String())
	return nil
}

// Layer builds a layer from name -> content.
func Layer(t *testing.T, files map[string]string) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for n, c := range files {
		tw.WriteHeader(&tar.Header{Name: n, Mode: 0o644, Size: int64(len(c)), Typeflag: tar.TypeReg})
		tw.Write([]byte(c))
	}
	tw.Close()
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// Image is a two-layer image; base is shared between images.
func Image(t *testing.T, base v1.Layer, marker, user string) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, base, Layer(t, map[string]string{"marker": marker}))
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.User = user
	cf.Config.Cmd = []string{"sh"}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func (r *Registry) Push(t *testing.T, ref string, img v1.Image) {
	t.Helper()
	tag, err := name.NewTag(r.Host+"/"+ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img, remote.WithAuth(r.Auth)); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}

func (r *Registry) PushIndex(t *testing.T, ref string, idx v1.ImageIndex) {
	t.Helper()
	tag, _ := name.NewTag(r.Host+"/"+ref, name.Insecure)
	if err := remote.WriteIndex(tag, idx, remote.WithAuth(r.Auth)); err != nil {
		t.Fatalf("push index %s: %v", ref, err)
	}
}

// TarTree writes the tree under dir as a tar file at out, then extra if
// given (a hand-made entry, e.g. a hostile one).
func TarTree(t *testing.T, dir, out string, extra *tar.Header) {
	t.Helper()
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	err = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		h, err := tar.FileInfoHeader(fi, "")
		if err != nil {
			return err
		}
		h.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			h.Name += "/"
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			src, err := os.Open(p)
			if err != nil {
				return err
			}
			defer src.Close()
			_, err = io.Copy(tw, src)
			return err
		}
		return nil
	})
	if err == nil && extra != nil {
		err = tw.WriteHeader(extra)
	}
	if err == nil {
		err = tw.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
}
