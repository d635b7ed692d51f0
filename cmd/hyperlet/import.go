package main

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/hyperlet/hyperlet/pkg/imageservice"
)

// importImages loads a docker save archive or an OCI layout (directory or
// tar) into the image store, for nodes without a registry. It opens the
// store itself, so the daemon must not be running on the same root.
func importImages(o options, tags []string, paths []string) error {
	if len(paths) == 0 {
		return fmt.Errorf("import needs a docker save archive or an OCI layout")
	}
	e, err := setup(o)
	if err != nil {
		return err
	}
	if err := e.lockRoot(); err != nil {
		return fmt.Errorf("%w (stop the daemon to import, or pull from a registry)", err)
	}
	images, err := imageservice.New(filepath.Join(o.root, "images"), e.cfg.Registry)
	if err != nil {
		return err
	}
	defer images.Close()
	for _, p := range paths {
		imgs, err := images.Import(context.Background(), p, tags)
		if err != nil {
			return fmt.Errorf("import %s: %w", p, err)
		}
		for _, img := range imgs {
			fmt.Printf("%s %v\n", img.ID, img.RepoTags)
		}
	}
	return nil
}
