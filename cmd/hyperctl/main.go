// Command hyperctl is a small docker-like CLI over the CRI socket: one
// container per pod, `hyperctl run busybox echo hi`. It speaks only the CRI
// API (and its streaming URLs), so it works against any CRI runtime.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	utilexec "k8s.io/utils/exec"
)

const usageText = `usage: hyperctl [--endpoint SOCKET] COMMAND [ARGS]

  run [-d] [--rm] [-i] [-t] [--name N] [-net host] [-runtime H] [-p HOST:POD]... [-v HOST:CTR[:ro]]...
      [-e K=V]... [--memory SIZE] [--cpus N] IMAGE [CMD...]
                        run a command in a new one-container pod
  ps [-a]               list containers
  exec [-i] [-t] CONTAINER CMD...
  logs [-f] CONTAINER   print a container's output
  stop CONTAINER...     stop containers (SIGTERM, then SIGKILL after 10 s)
  rm [-f] CONTAINER...  remove containers and their pods
  pull IMAGE            pull an image
  images                list images
  rmi IMAGE...          remove images
  inspect CONTAINER     print a container's status as JSON
  port-forward CONTAINER [LOCAL:]PORT...
                        forward local ports to the pod's localhost (inside its VM)
  usage [--since T] [--format table|json|csv]
                        each pod VM's life by the second (hyperlet only: its usage.sock)

The endpoint defaults to $HYPERCTL_ENDPOINT or /run/hyperlet/hyperlet.sock;
the usage endpoint to $HYPERCTL_USAGE_SOCKET or usage.sock beside it.
Containers are named by ID prefix or name.`

type cli struct {
	rs runtimeapi.RuntimeServiceClient
	is runtimeapi.ImageServiceClient
	// usageSocket is the daemon's usage endpoint, beside its CRI socket.
	usageSocket string
}

func main() {
	args := os.Args[1:]
	endpoint := os.Getenv("HYPERCTL_ENDPOINT")
	if endpoint == "" {
		endpoint = "/run/hyperlet/hyperlet.sock"
	}
	for len(args) > 0 && strings.HasPrefix(args[0], "-") {
		switch {
		case args[0] == "--endpoint" && len(args) > 1:
			endpoint, args = args[1], args[2:]
		case strings.HasPrefix(args[0], "--endpoint="):
			endpoint, args = strings.TrimPrefix(args[0], "--endpoint="), args[1:]
		case args[0] == "-h" || args[0] == "--help":
			fmt.Println(usageText)
			return
		default:
			fail(2, "unknown flag %s\n%s", args[0], usageText)
		}
	}
	if len(args) == 0 {
		fail(2, "%s", usageText)
	}
	endpoint = strings.TrimPrefix(endpoint, "unix://")
	if abs, err := filepath.Abs(endpoint); err == nil {
		endpoint = abs
	}
	conn, err := grpc.NewClient("unix://"+endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fail(1, "connect %s: %v", endpoint, err)
	}
	defer conn.Close()
	c := &cli{rs: runtimeapi.NewRuntimeServiceClient(conn), is: runtimeapi.NewImageServiceClient(conn),
		usageSocket: filepath.Join(filepath.Dir(endpoint), "usage.sock")}
	if v := os.Getenv("HYPERCTL_USAGE_SOCKET"); v != "" {
		c.usageSocket = v
	}
	ctx := context.Background()
	cmds := map[string]func(context.Context, []string) error{
		"run": c.run, "ps": c.ps, "exec": c.exec, "logs": c.logs, "stop": c.stop, "rm": c.rm,
		"pull": c.pull, "images": c.images, "rmi": c.rmi, "inspect": c.inspect, "port-forward": c.portForward,
		"usage": c.usage,
	}
	fn, ok := cmds[args[0]]
	if !ok {
		fail(2, "unknown command %q\n%s", args[0], usageText)
	}
	err = fn(ctx, args[1:])
	var exit utilexec.ExitError
	var code exitCode
	switch {
	case err == nil:
	case errors.As(err, &code):
		os.Exit(int(code))
	case errors.As(err, &exit):
		os.Exit(exit.ExitStatus())
	default:
		fail(1, "%v", err)
	}
}

// exitCode is a container's exit code, passed on as hyperctl's own.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit code %d", int(e)) }

func fail(code int, format string, a ...any) {
	fmt.Fprintf(os.Stderr, "hyperctl: "+format+"\n", a...)
	os.Exit(code)
}

// container finds a container by ID prefix or name.
func (c *cli) container(ctx context.Context, ref string) (*runtimeapi.Container, error) {
	list, err := c.rs.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if err != nil {
		return nil, err
	}
	var found []*runtimeapi.Container
	for _, ct := range list.Containers {
		if strings.HasPrefix(ct.Id, ref) || ct.Labels[labelName] == ref {
			found = append(found, ct)
		}
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("no container %q", ref)
	case 1:
		return found[0], nil
	}
	return nil, fmt.Errorf("%q names %d containers", ref, len(found))
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func age(ns int64) string {
	return time.Since(time.Unix(0, ns)).Round(time.Second).String()
}
