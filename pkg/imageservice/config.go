package imageservice

import (
	"bytes"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// ConfigFile reads an image's configuration (entrypoint, env, user...) from
// the content store.
func (s *Service) ConfigFile(img *Image) (*v1.ConfigFile, error) {
	b, err := s.store.ReadAll(img.Config, maxConfigBytes)
	if err != nil {
		return nil, fmt.Errorf("read config of %s: %w", img.ID, err)
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("parse config of %s: %w", img.ID, err)
	}
	return cfg, nil
}
