package imageservice

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/distribution/reference"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	"k8s.io/klog/v2"

	"github.com/hyperlet/hyperlet/pkg/failpoint"
)

// Size limits for what a registry sends (untrusted input).
const (
	maxManifestBytes = 4 << 20
	maxConfigBytes   = 8 << 20
	maxLayers        = 256
)

// platform is the only platform pod VMs run.
var platform = v1.Platform{OS: "linux", Architecture: "amd64"}

// ErrInvalidReference means an image name does not parse.
var ErrInvalidReference = errors.New("invalid image reference")

// Normalize turns a user's image name into its canonical form:
// "busybox" -> "docker.io/library/busybox:latest".
func Normalize(ref string) (reference.Named, error) {
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return nil, fmt.Errorf("%w %q: %v", ErrInvalidReference, ref, err)
	}
	return named, nil
}

// Pull fetches an image into the store and records it under ref. Concurrent
// pulls of the same reference share one download.
func (s *Service) Pull(ctx context.Context, ref string, auth *Auth) (*Image, error) {
	named, err := Normalize(ref)
	if err != nil {
		return nil, err
	}
	v, err, _ := s.pulls.Do(named.String(), func() (any, error) {
		// Removals (and their garbage collection) wait for pulls in flight.
		s.gcMu.RLock()
		defer s.gcMu.RUnlock()
		pr := &progress{ref: named.String(), started: time.Now()}
		s.inflight.Store(pr, struct{}{})
		defer s.inflight.Delete(pr)
		return s.pull(ctx, named, auth, pr)
	})
	if err != nil {
		return nil, err
	}
	return v.(*Image), nil
}

func (s *Service) pull(ctx context.Context, named reference.Named, auth *Auth, pr *progress) (*Image, error) {
	domain, path := reference.Domain(named), reference.Path(named)
	eps, err := endpoints(s.registry, domain)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, ep := range eps {
		img, err := s.pullFrom(ctx, ep, path, named, auth, pr)
		if err == nil {
			return img, nil
		}
		klog.V(2).InfoS("pull from endpoint failed", "image", named.String(), "endpoint", ep.host, "err", err)
		errs = append(errs, fmt.Errorf("%s: %w", ep.host, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("pull %s: %w", named, errors.Join(errs...))
}

func (s *Service) pullFrom(ctx context.Context, ep endpoint, path string, named reference.Named, auth *Auth, pr *progress) (*Image, error) {
	var opts []name.Option
	if ep.insecure {
		opts = append(opts, name.Insecure)
	}
	var ref name.Reference
	var err error
	if c, ok := named.(reference.Canonical); ok {
		ref, err = name.NewDigest(ep.host+"/"+path+"@"+c.Digest().String(), opts...)
	} else {
		ref, err = name.NewTag(ep.host+"/"+path+":"+named.(reference.Tagged).Tag(), opts...)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidReference, err)
	}
	tr, err := transport(s.registry, ep.host)
	if err != nil {
		return nil, err
	}
	ropts := []remote.Option{
		remote.WithContext(ctx),
		remote.WithTransport(tr),
		remote.WithAuth(authenticator(s.registry, ep.host, auth)),
		remote.WithPlatform(platform),
	}
	desc, err := remote.Get(ref, ropts...)
	if err != nil {
		return nil, err
	}
	// What the tag points at (an index for multi-platform images) is what
	// RepoDigests name.
	topDigest := digest.Digest(desc.Digest.String())
	if err := s.putManifest(topDigest, desc.Manifest); err != nil {
		return nil, err
	}
	img, err := desc.Image() // selects linux/amd64 from an index
	if err != nil {
		return nil, err
	}
	rec, err := s.storeImage(img, pr)
	if err != nil {
		return nil, err
	}
	repo := named.Name()
	if t, ok := named.(reference.Tagged); ok {
		rec.RepoTags = []string{repo + ":" + t.Tag()}
	}
	rec.RepoDigests = []string{repo + "@" + topDigest.String()}
	if err := failpoint.Hit("pull-image:before-record"); err != nil {
		return nil, err
	}
	return s.record(rec)
}

// storeImage puts an image's manifest, config and layers into the content
// store (each verified against its digest) and returns its record, without
// names. pr, if set, counts the layer bytes fetched.
func (s *Service) storeImage(img v1.Image, pr *progress) (*Image, error) {
	raw, err := img.RawManifest()
	if err != nil {
		return nil, err
	}
	manifestDigest := digest.FromBytes(raw)
	if err := s.putManifest(manifestDigest, raw); err != nil {
		return nil, err
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	if len(m.Layers) > maxLayers {
		return nil, fmt.Errorf("image has %d layers, limit %d", len(m.Layers), maxLayers)
	}
	if m.Config.Size > maxConfigBytes {
		return nil, fmt.Errorf("config larger than %d bytes", maxConfigBytes)
	}
	cfgRaw, err := img.RawConfigFile()
	if err != nil {
		return nil, err
	}
	cfgDigest := digest.Digest(m.Config.Digest.String())
	if err := s.store.Put(cfgDigest, m.Config.Size, bytes.NewReader(cfgRaw)); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	var cfg v1.ConfigFile
	if err := json.Unmarshal(cfgRaw, &cfg); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}

	rec := &Image{ID: cfgDigest, Manifest: manifestDigest, Config: cfgDigest, User: cfg.Config.User,
		Size: uint64(len(raw)) + uint64(m.Config.Size)}
	// Each layer not stored yet is fetched once, however often the
	// manifest lists it.
	var missing []v1.Descriptor
	seen := map[digest.Digest]bool{}
	for _, l := range m.Layers {
		d := digest.Digest(l.Digest.String())
		if !seen[d] && !s.store.Has(d) {
			missing = append(missing, l)
		}
		seen[d] = true
	}
	pr.need(missing)
	for _, l := range missing {
		if s.store.Has(digest.Digest(l.Digest.String())) {
			pr.stored(l.Size) // by a concurrent pull meanwhile
			continue
		}
		if err := s.fetchLayer(img, l, pr); err != nil {
			return nil, err
		}
	}
	for _, l := range m.Layers {
		rec.Layers = append(rec.Layers, digest.Digest(l.Digest.String()))
		rec.Size += uint64(l.Size)
	}
	return rec, nil
}

// putManifest stores a manifest or index, refusing oversized ones.
func (s *Service) putManifest(d digest.Digest, raw []byte) error {
	if len(raw) > maxManifestBytes {
		return fmt.Errorf("manifest %s larger than %d bytes", d, maxManifestBytes)
	}
	return s.store.Put(d, int64(len(raw)), bytes.NewReader(raw))
}

func (s *Service) fetchLayer(img v1.Image, l v1.Descriptor, pr *progress) error {
	layer, err := img.LayerByDigest(l.Digest)
	if err != nil {
		return fmt.Errorf("layer %s: %w", l.Digest, err)
	}
	rc, err := layer.Compressed()
	if err != nil {
		return fmt.Errorf("layer %s: %w", l.Digest, err)
	}
	defer rc.Close()
	// The store verifies size and digest; go-containerregistry's own check
	// runs too, at EOF.
	if err := s.store.Put(digest.Digest(l.Digest.String()), l.Size, pr.reader(rc)); err != nil {
		return fmt.Errorf("layer %s: %w", l.Digest, err)
	}
	pr.layerDone()
	return nil
}

// record merges a pulled image into the records: a tag moves to the image
// it now names; an image left with neither tags nor digests is dropped.
func (s *Service) record(rec *Image) (*Image, error) {
	var out *Image
	err := s.db.update(func(all []*Image) ([]*Image, []digest.Digest, error) {
		var put []*Image
		var del []digest.Digest
		merged := rec
		for _, img := range all {
			if img.ID == rec.ID {
				merged = img
				continue
			}
			before := len(img.RepoTags)
			img.RepoTags = slices.DeleteFunc(img.RepoTags, func(t string) bool { return slices.Contains(rec.RepoTags, t) })
			if len(img.RepoTags) != before {
				put = append(put, img)
			}
		}
		if merged != rec {
			merged.RepoTags = union(merged.RepoTags, rec.RepoTags)
			merged.RepoDigests = union(merged.RepoDigests, rec.RepoDigests)
			merged.Manifest, merged.Layers, merged.Size, merged.User = rec.Manifest, rec.Layers, rec.Size, rec.User
		}
		put = append(put, merged)
		out = merged
		return put, del, nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func union(a, b []string) []string {
	for _, x := range b {
		if !slices.Contains(a, x) {
			a = append(a, x)
		}
	}
	return a
}
