// Command testimages builds hyperlet's test and demo images from Debian's
// busybox-static and pushes them to a registry (hack/registry.sh starts
// one). No Docker daemon is involved:
//
//	library/busybox:latest and :1          one image under two tags: busybox
//	                                       with users root, app (1000, also in
//	                                       group extra 2000) and nobody
//	hyperlet-test/busybox-multiarch:1      an index: that image for
//	                                       linux/amd64, a marker image for
//	                                       linux/arm64
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/hyperlet/hyperlet/pkg/imageservice/imagetest"
)

func main() {
	registry := flag.String("registry", "127.0.0.1:5050", "registry host:port (plain HTTP)")
	flag.Parse()
	if err := push(*registry); err != nil {
		fmt.Fprintln(os.Stderr, "testimages:", err)
		os.Exit(1)
	}
}

func push(registry string) error {
	bb, err := imagetest.Busybox()
	if err != nil {
		return err
	}
	for _, tag := range []string{"library/busybox:latest", "library/busybox:1"} {
		ref, err := name.NewTag(registry+"/"+tag, name.Insecure)
		if err != nil {
			return err
		}
		if err := remote.Write(ref, bb); err != nil {
			return fmt.Errorf("push %s: %w", tag, err)
		}
		fmt.Println("pushed", ref)
	}
	// A sandbox ("pause") image for runtimes that run one (the benchmark's
	// containerd peer): a shell that waits for SIGTERM.
	cf, err := bb.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.Config.Entrypoint = []string{"/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"}
	cf.Config.Cmd = nil
	pause, err := mutate.ConfigFile(bb, cf)
	if err != nil {
		return err
	}
	pref, err := name.NewTag(registry+"/hyperlet-test/pause:1", name.Insecure)
	if err != nil {
		return err
	}
	if err := remote.Write(pref, pause); err != nil {
		return fmt.Errorf("push %s: %w", pref, err)
	}
	fmt.Println("pushed", pref)
	arm, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{OS: "linux", Architecture: "arm64"})
	if err != nil {
		return err
	}
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: bb, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
	)
	ref, err := name.NewTag(registry+"/hyperlet-test/busybox-multiarch:1", name.Insecure)
	if err != nil {
		return err
	}
	if err := remote.WriteIndex(ref, idx); err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	fmt.Println("pushed", ref)
	return nil
}
