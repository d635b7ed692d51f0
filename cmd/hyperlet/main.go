// Command hyperlet is the hyperlet daemon: a CRI runtime that runs every pod
// in its own micro-VM. `hyperlet` serves the CRI on a unix socket;
// `hyperlet vm-run -- CMD` boots one throwaway pod VM and runs CMD in it;
// `hyperlet status` asks a running daemon for its CRI status; `hyperlet
// import` loads image archives into the store of a stopped daemon.
package main

import (
	"flag"
	"fmt"
	"os"

	"k8s.io/klog/v2"

	"github.com/hyperlet/hyperlet/pkg/config"
)

// version is set at build time.
var version = "dev"

// options are the flags every subcommand shares.
type options struct {
	config string
	socket string
	root   string
	state  string
}

func (o *options) register(fs *flag.FlagSet) {
	fs.StringVar(&o.config, "config", config.DefaultConfigFile, "configuration file (TOML); a missing file means defaults")
	fs.StringVar(&o.socket, "socket", config.DefaultSocket, "unix socket the CRI is served on")
	fs.StringVar(&o.root, "root", config.DefaultRoot, "directory for persistent data")
	fs.StringVar(&o.state, "state", config.DefaultState, "directory for runtime data (sockets, VM state)")
}

func main() {
	args := os.Args[1:]
	cmd := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet("hyperlet "+cmd, flag.ExitOnError)
	klog.InitFlags(fs)
	var o options
	o.register(fs)
	var err error
	code := 0
	switch cmd {
	case "serve":
		fs.Parse(args)
		err = serve(o)
	case "vm-run":
		memory := fs.Int("memory", 0, "guest memory in MiB (default: the config's)")
		fs.Parse(args)
		code, err = vmRun(o, *memory, fs.Args())
	case "status":
		fs.Parse(args)
		err = criStatus(o)
	case "import":
		var tags tagList
		fs.Var(&tags, "tag", "name for the imported image(s); repeatable")
		fs.Parse(args)
		err = importImages(o, tags, fs.Args())
	case "version":
		fmt.Println("hyperlet", version)
	default:
		fmt.Fprintf(os.Stderr, "hyperlet: unknown command %q (serve, vm-run, status, import, version)\n", cmd)
		os.Exit(2)
	}
	klog.Flush()
	if err != nil {
		fmt.Fprintln(os.Stderr, "hyperlet:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

type tagList []string

func (t *tagList) String() string     { return fmt.Sprint(*t) }
func (t *tagList) Set(v string) error { *t = append(*t, v); return nil }
