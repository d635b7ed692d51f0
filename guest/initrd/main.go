// Command mkinitrd writes the pod VM's initramfs: a newc cpio archive whose
// /init is the hyperlet agent. Output is deterministic (fixed owners and
// times). With -busybox it also installs a static busybox and its applets in
// /bin; that image is for tests and debugging, the agent needs none of it.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
)

func main() {
	out := flag.String("o", "", "output file")
	agent := flag.String("agent", "", "agent binary, installed as /init")
	busybox := flag.String("busybox", "", "optional static busybox, installed with its applets in /bin")
	runtime := flag.String("runtime", "", "OCI runtime binary (crun, or runc), installed as "+agentapi.RuntimePath+" with the shared libraries it needs")
	flag.Parse()
	if *out == "" || *agent == "" || *runtime == "" {
		fmt.Fprintln(os.Stderr, "usage: mkinitrd -o OUT -agent AGENT -runtime CRUN [-busybox BUSYBOX]")
		os.Exit(2)
	}
	if err := build(*out, *agent, *runtime, *busybox); err != nil {
		fmt.Fprintln(os.Stderr, "mkinitrd:", err)
		os.Exit(1)
	}
}

func build(out, agent, runtime, busybox string) error {
	tmp := out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	bw := bufio.NewWriter(f)
	w := &cpioWriter{w: bw}

	for _, d := range []string{"bin", "dev", "etc", "proc", "root", "run", "sbin", "sys", "tmp", "usr", "usr/bin", "usr/sbin", "var"} {
		w.dir(d, 0o755)
	}
	// The kernel opens /dev/console for PID 1 before devtmpfs is mounted.
	w.node("dev/console", 0o020600, 5, 1)
	if err := w.file("init", agent, 0o755); err != nil {
		return err
	}
	if err := w.file(strings.TrimPrefix(agentapi.RuntimePath, "/"), runtime, 0o755); err != nil {
		return err
	}
	libs, err := sharedLibs(runtime)
	if err != nil {
		return err
	}
	made := map[string]bool{}
	for _, lib := range libs {
		dir := strings.TrimPrefix(filepath.Dir(lib), "/")
		for d, parts := "", strings.Split(dir, "/"); len(parts) > 0; parts = parts[1:] {
			d = filepath.Join(d, parts[0])
			if !made[d] && d != "usr" {
				made[d] = true
				w.dir(d, 0o755)
			}
		}
		if err := w.file(strings.TrimPrefix(lib, "/"), lib, 0o755); err != nil {
			return err
		}
	}
	if busybox != "" {
		if err := w.file("bin/busybox", busybox, 0o755); err != nil {
			return err
		}
		applets, err := exec.Command(busybox, "--list").Output()
		if err != nil {
			return fmt.Errorf("%s --list: %w", busybox, err)
		}
		names := strings.Fields(string(applets))
		sort.Strings(names)
		for _, a := range names {
			if a != "busybox" {
				w.symlink("bin/"+a, "busybox")
			}
		}
	}
	w.trailer()
	if w.err != nil {
		return w.err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}
