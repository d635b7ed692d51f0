// Command hostcontainerd writes the configuration of a containerd (Debian's,
// with its CRI plugin and runc) to serve as hyperlet's host runtime on a
// machine that runs none, in a directory of its own, and prints its path
// and socket: hack/demo.sh starts it. A node's own containerd
// (/run/containerd/containerd.sock) needs none of this.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/hyperlet/hyperlet/internal/testcontainerd"
)

func main() {
	dir := flag.String("dir", "", "containerd's root, state and socket directory")
	pause := flag.String("pause", "docker.io/hyperlet-test/pause:1", "sandbox (pause) image")
	cni := flag.String("cni", "/etc/cni/net.d", "CNI configuration directory")
	var mirrors []string
	flag.Func("mirror", "HOST=MIRROR: pull HOST's images from the plain-HTTP MIRROR (host:port); repeatable", func(s string) error {
		if !strings.Contains(s, "=") {
			return fmt.Errorf("want HOST=MIRROR, got %q", s)
		}
		mirrors = append(mirrors, s)
		return nil
	})
	flag.Parse()
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "hostcontainerd: -dir is required")
		os.Exit(2)
	}
	conf := testcontainerd.Config{Dir: *dir, SandboxImage: *pause, CNIConfDir: *cni, Mirrors: map[string]string{}}
	for _, m := range mirrors {
		h, mirror, _ := strings.Cut(m, "=")
		conf.Mirrors[h] = mirror
	}
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		fmt.Fprintln(os.Stderr, "hostcontainerd:", err)
		os.Exit(1)
	}
	path, err := conf.Write()
	if err != nil {
		fmt.Fprintln(os.Stderr, "hostcontainerd:", err)
		os.Exit(1)
	}
	fmt.Println(path)
	fmt.Println(conf.Socket())
}
