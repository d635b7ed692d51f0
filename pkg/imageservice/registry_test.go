package imageservice

import (
	"bytes"
	"context"
	"errors"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/hyperlet/hyperlet/pkg/config"
	"github.com/hyperlet/hyperlet/pkg/imageservice/imagetest"
)

// mirrorConfig maps the fictitious registry "registry.test" to r.
func mirrorConfig(r *imagetest.Registry) config.Registry {
	return config.Registry{Mirrors: map[string]config.Mirror{"registry.test": {Endpoints: []string{"http://" + r.Host}}}}
}

func newService(t *testing.T, reg config.Registry) *Service {
	t.Helper()
	s, err := New(t.TempDir(), reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestPullTagsDigestsAndRemove(t *testing.T) {
	r := imagetest.StartRegistry(t, "", "")
	base := imagetest.Layer(t, map[string]string{"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33::/var/www:/bin/false\n"})
	imgA := imagetest.Image(t, base, "a", "www-data")
	imgB := imagetest.Image(t, base, "b", "1002:1004")
	r.Push(t, "hyperlet/a:1", imgA)
	r.Push(t, "hyperlet/a-alias:latest", imgA) // same image, second name
	r.Push(t, "hyperlet/b:1", imgB)
	s := newService(t, mirrorConfig(r))
	ctx := context.Background()

	a, err := s.Pull(ctx, "registry.test/hyperlet/a:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	cfgA, _ := imgA.ConfigName()
	manA, _ := imgA.Digest()
	if string(a.ID) != cfgA.String() || a.User != "www-data" || len(a.Layers) != 2 {
		t.Fatalf("image = %+v, want ID %s", a, cfgA)
	}
	if want := "registry.test/hyperlet/a@" + manA.String(); a.RepoDigests[0] != want || a.RepoTags[0] != "registry.test/hyperlet/a:1" {
		t.Fatalf("names = %v %v", a.RepoTags, a.RepoDigests)
	}
	// The second name of the same image joins the same record.
	if a2, err := s.Pull(ctx, "registry.test/hyperlet/a-alias", nil); err != nil || a2.ID != a.ID || len(a2.RepoTags) != 2 {
		t.Fatalf("alias pull = %+v, %v", a2, err)
	}
	// By digest.
	byDigest, err := s.Pull(ctx, "registry.test/hyperlet/a@"+manA.String(), nil)
	if err != nil || byDigest.ID != a.ID {
		t.Fatalf("digest pull = %+v, %v", byDigest, err)
	}
	for _, ref := range []string{"registry.test/hyperlet/a:1", a.ID.String(), a.ID.Encoded(), "registry.test/hyperlet/a@" + manA.String()} {
		if got, err := s.Get(ref); err != nil || got.ID != a.ID {
			t.Errorf("Get(%s) = %v, %v", ref, got, err)
		}
	}
	if _, err := s.Get("registry.test/hyperlet/nope:1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(missing) = %v", err)
	}

	before, _ := s.Usage()
	b, err := s.Pull(ctx, "registry.test/hyperlet/b:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	withB, _ := s.Usage()
	if withB.Bytes <= before.Bytes {
		t.Errorf("usage did not grow with a pull: %d -> %d", before.Bytes, withB.Bytes)
	}
	if err := s.Remove("registry.test/hyperlet/b:1"); err != nil {
		t.Fatal(err)
	}
	after, _ := s.Usage()
	if after.Bytes != before.Bytes {
		t.Errorf("usage after removing b = %d, want %d as before pulling it", after.Bytes, before.Bytes)
	}
	// The shared base layer is still there for a.
	if !s.store.Has(a.Layers[0]) || s.store.Has(b.Layers[1]) {
		t.Error("removal freed a shared layer or kept b's own layer")
	}
	if err := s.Remove("registry.test/hyperlet/b:1"); err != nil {
		t.Errorf("removing a missing image: %v", err)
	}
	if imgs, _ := s.List(); len(imgs) != 1 {
		t.Errorf("List = %d images, want 1", len(imgs))
	}
}

func TestPullIndexSelectsLinuxAmd64(t *testing.T) {
	r := imagetest.StartRegistry(t, "", "")
	base := imagetest.Layer(t, map[string]string{"etc/passwd": "root:x:0:0::/:/bin/sh\n"})
	amd := imagetest.Image(t, base, "amd64", "")
	arm := imagetest.Image(t, base, "arm64", "")
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
	)
	r.PushIndex(t, "hyperlet/multi:1", idx)
	s := newService(t, mirrorConfig(r))
	img, err := s.Pull(context.Background(), "registry.test/hyperlet/multi:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := amd.ConfigName()
	idxDigest, _ := idx.Digest()
	if string(img.ID) != want.String() {
		t.Fatalf("pulled %s, want the amd64 image %s", img.ID, want)
	}
	if img.RepoDigests[0] != "registry.test/hyperlet/multi@"+idxDigest.String() {
		t.Fatalf("RepoDigests = %v, want the index digest", img.RepoDigests)
	}
}

func TestPullAuth(t *testing.T) {
	r := imagetest.StartRegistry(t, "alice", "s3cret")
	r.Push(t, "private/img:1", imagetest.Image(t, imagetest.Layer(t, map[string]string{"f": "x"}), "p", ""))
	ref := "registry.test/private/img:1"
	ctx := context.Background()
	tests := []struct {
		name string
		reg  func(config.Registry) config.Registry
		auth *Auth
		ok   bool
	}{
		{name: "anonymous refused", ok: false},
		{name: "wrong password", auth: &Auth{Username: "alice", Password: "nope"}, ok: false},
		{name: "CRI credentials", auth: &Auth{Username: "alice", Password: "s3cret"}, ok: true},
		{name: "CRI auth string", auth: &Auth{Auth: "YWxpY2U6czNjcmV0"}, ok: true},
		{name: "configured credentials", reg: func(c config.Registry) config.Registry {
			c.Configs = map[string]config.RegistryHost{r.Host: {Auth: &config.RegistryAuth{Username: "alice", Password: "s3cret"}}}
			return c
		}, ok: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := mirrorConfig(r)
			if tc.reg != nil {
				reg = tc.reg(reg)
			}
			_, err := newService(t, reg).Pull(ctx, ref, tc.auth)
			if (err == nil) != tc.ok {
				t.Fatalf("pull: %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestNormalize(t *testing.T) {
	tests := map[string]string{
		"busybox":                          "docker.io/library/busybox:latest",
		"busybox:1.36":                     "docker.io/library/busybox:1.36",
		"registry.k8s.io/pause:3.9":        "registry.k8s.io/pause:3.9",
		"127.0.0.1:5000/x/y":               "127.0.0.1:5000/x/y:latest",
		"quay.io/a/b@sha256:" + hex64('a'): "quay.io/a/b@sha256:" + hex64('a'),
	}
	for in, want := range tests {
		got, err := Normalize(in)
		if err != nil || got.String() != want {
			t.Errorf("Normalize(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "library/BusyBox", "a b", "x@sha256:short"} {
		if _, err := Normalize(bad); !errors.Is(err, ErrInvalidReference) {
			t.Errorf("Normalize(%q) = %v, want ErrInvalidReference", bad, err)
		}
	}
}

func hex64(c byte) string { return string(bytes.Repeat([]byte{c}, 64)) }
