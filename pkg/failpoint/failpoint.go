// Package failpoint lets tests make the daemon fail at a named step: return
// an error there, or die there by SIGKILL, as a crash or an OOM kill would.
//
// Failpoints are set only through the HYPERLET_FAILPOINTS environment
// variable, read once at start: a comma-separated list of name=action, where
// action is "error", "panic" or "kill". Production configuration has no way to set
// them; unset, Hit is one map lookup.
package failpoint

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"

	"k8s.io/klog/v2"
)

// EnvVar names the variable failpoints are read from.
const EnvVar = "HYPERLET_FAILPOINTS"

// ErrInjected is what an "error" failpoint returns.
var ErrInjected = errors.New("injected failure")

var points = parse(os.Getenv(EnvVar))

func parse(v string) map[string]string {
	out := map[string]string{}
	for _, kv := range strings.Split(v, ",") {
		name, action, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if ok && name != "" {
			out[name] = action
		}
	}
	return out
}

// Hit runs the failpoint name: nil unless it is set.
func Hit(name string) error {
	switch points[name] {
	case "":
		return nil
	case "kill":
		klog.InfoS("failpoint: killing the daemon", "failpoint", name)
		klog.Flush()
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	case "error":
		return fmt.Errorf("failpoint %s: %w", name, ErrInjected)
	case "panic":
		panic(fmt.Sprintf("failpoint %s", name))
	default:
		return fmt.Errorf("failpoint %s: unknown action %q", name, points[name])
	}
}
