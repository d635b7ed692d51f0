// Command hyperctl is a small docker-like CLI over the CRI socket: one
// container per pod, `hyperctl run busybox echo hi`. It speaks only the CRI
// API (and its streaming URLs), so it works against any CRI runtime.
package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	utilexec "k8s.io/utils/exec"
)

type cli struct {
	rs runtimeapi.RuntimeServiceClient
	is runtimeapi.ImageServiceClient
	// adminSocket is hyperlet's admin endpoint (usage, pause, pulls),
	// beside its CRI socket; admin is its client, made once.
	adminSocket string
	adminOnce   sync.Once
	admin       *http.Client
}

func main() {
	c := &cli{}
	err := newRoot(c).ExecuteContext(context.Background())
	var exit utilexec.ExitError
	var code exitCode
	switch {
	case err == nil:
	case errors.As(err, &code):
		os.Exit(int(code))
	case errors.As(err, &exit):
		os.Exit(exit.ExitStatus())
	default:
		fmt.Fprintf(os.Stderr, "hyperctl: %v\n", err)
		os.Exit(1)
	}
}

// newRoot builds the command tree (spf13/cobra: help per command, the
// usual flag forms, shell completion).
func newRoot(c *cli) *cobra.Command {
	endpoint := os.Getenv("HYPERCTL_ENDPOINT")
	if endpoint == "" {
		endpoint = "/run/hyperlet/hyperlet.sock"
	}
	var conn *grpc.ClientConn
	root := &cobra.Command{
		Use:   "hyperctl",
		Short: "A docker-like CLI over the CRI socket: one container per pod",
		Long: `hyperctl runs and manages containers through a CRI runtime's socket (hyperlet,
or any other), one container per pod: hyperctl run busybox echo hi.
Containers are named by ID prefix or name. The endpoint defaults to
$HYPERCTL_ENDPOINT or /run/hyperlet/hyperlet.sock; hyperlet's admin endpoint
(usage, pause, pull progress) to $HYPERCTL_ADMIN_SOCKET or admin.sock beside it.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			ep := strings.TrimPrefix(endpoint, "unix://")
			if abs, err := filepath.Abs(ep); err == nil {
				ep = abs
			}
			var err error
			if conn, err = grpc.NewClient("unix://"+ep, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
				return fmt.Errorf("connect %s: %w", ep, err)
			}
			c.rs, c.is = runtimeapi.NewRuntimeServiceClient(conn), runtimeapi.NewImageServiceClient(conn)
			c.adminSocket = filepath.Join(filepath.Dir(ep), "admin.sock")
			if v := os.Getenv("HYPERCTL_ADMIN_SOCKET"); v != "" {
				c.adminSocket = v
			}
			return nil
		},
		PersistentPostRun: func(*cobra.Command, []string) {
			if conn != nil {
				conn.Close()
			}
		},
	}
	root.PersistentFlags().StringVar(&endpoint, "endpoint", endpoint, "CRI socket")

	ro := &runOpts{}
	run := &cobra.Command{
		Use:   "run [flags] IMAGE [COMMAND [ARG...]]",
		Short: "Run a command in a new one-container pod",
		Args:  cobra.MinimumNArgs(1),
		RunE:  func(cmd *cobra.Command, args []string) error { return c.run(cmd.Context(), ro, args) },
	}
	rf := run.Flags()
	rf.SetInterspersed(false) // flags after IMAGE are the command's
	rf.BoolVarP(&ro.detach, "detach", "d", false, "run in the background, print the container ID")
	rf.BoolVar(&ro.rm, "rm", false, "remove the pod when the container exits")
	rf.BoolVarP(&ro.interactive, "interactive", "i", false, "keep stdin open")
	rf.BoolVarP(&ro.tty, "tty", "t", false, "allocate a terminal")
	rf.StringVar(&ro.name, "name", "", "container (and pod) name")
	rf.StringVar(&ro.memory, "memory", "", "memory limit (e.g. 256m)")
	rf.Float64Var(&ro.cpus, "cpus", 0, "CPU limit in cores")
	rf.StringVar(&ro.network, "net", "", `"host": share the node's network (the pod runs on the host runtime, not in a VM)`)
	rf.StringVar(&ro.runtimeClass, "runtime", "", "runtime handler (RuntimeClass handler), e.g. runc for the host runtime")
	rf.StringArrayVarP(&ro.ports, "publish", "p", nil, "publish HOST:POD[/udp]")
	rf.StringArrayVarP(&ro.volumes, "volume", "v", nil, "mount HOST:CTR[:ro]")
	rf.StringArrayVarP(&ro.envs, "env", "e", nil, "set K=V")

	var all bool
	var format string
	ps := &cobra.Command{Use: "ps", Short: "List containers", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return c.ps(cmd.Context(), all, format) }}
	ps.Flags().BoolVarP(&all, "all", "a", false, "show exited containers too")
	formatFlag(ps, &format)

	var interactive, tty bool
	execCmd := &cobra.Command{Use: "exec [flags] CONTAINER COMMAND [ARG...]", Short: "Run a command in a running container", Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error { return c.exec(cmd.Context(), interactive, tty, args) }}
	execCmd.Flags().SetInterspersed(false)
	execCmd.Flags().BoolVarP(&interactive, "interactive", "i", false, "pass stdin")
	execCmd.Flags().BoolVarP(&tty, "tty", "t", false, "allocate a terminal")

	var follow bool
	logs := &cobra.Command{Use: "logs [flags] CONTAINER", Short: "Print a container's output", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return c.logs(cmd.Context(), follow, args[0]) }}
	logs.Flags().BoolVarP(&follow, "follow", "f", false, "follow until the container exits")

	var force bool
	rm := &cobra.Command{Use: "rm [flags] CONTAINER...", Short: "Remove containers and their pods", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return c.rm(cmd.Context(), force, args) }}
	rm.Flags().BoolVarP(&force, "force", "f", false, "remove running containers too")

	var timeout int64
	stop := &cobra.Command{Use: "stop [flags] CONTAINER...", Short: "Stop containers (SIGTERM, then SIGKILL)", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return c.stop(cmd.Context(), timeout, args) }}
	stop.Flags().Int64VarP(&timeout, "time", "t", 10, "seconds to wait before SIGKILL")

	var imgFormat string
	images := &cobra.Command{Use: "images", Short: "List images", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return c.images(cmd.Context(), imgFormat) }}
	formatFlag(images, &imgFormat)

	var noStream bool
	stats := &cobra.Command{Use: "stats [flags] [CONTAINER...]", Aliases: []string{"top"}, Short: "Live CPU and memory of running containers",
		RunE: func(cmd *cobra.Command, args []string) error { return c.stats(cmd.Context(), noStream, args) }}
	stats.Flags().BoolVar(&noStream, "no-stream", false, "print one sample and exit")

	var since, usageFormat string
	usageCmd := &cobra.Command{Use: "usage", Short: "Each pod VM's life by the second (hyperlet only)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return c.usage(cmd.Context(), since, usageFormat) }}
	usageCmd.Flags().StringVar(&since, "since", "", "only VMs running at or after this time (RFC 3339, or a duration back from now such as 24h)")
	usageCmd.Flags().StringVar(&usageFormat, "format", "table", "table, json or csv")

	var podFormat string
	pods := &cobra.Command{Use: "pods", Short: "List pods", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return c.pods(cmd.Context(), podFormat) }}
	formatFlag(pods, &podFormat)

	var quiet bool
	pull := &cobra.Command{Use: "pull [flags] IMAGE", Short: "Pull an image (with progress from hyperlet, on a terminal)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return c.pull(cmd.Context(), args[0], quiet) }}
	pull.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only the image ID")

	cp := &cobra.Command{Use: "cp CONTAINER:SRC DEST | SRC CONTAINER:DEST", Short: "Copy files between a container and the host (the container needs tar)",
		Args: cobra.ExactArgs(2), RunE: func(cmd *cobra.Command, args []string) error { return c.cp(cmd.Context(), args[0], args[1]) }}

	var inspectFormat string
	inspect := &cobra.Command{Use: "inspect [flags] CONTAINER", Short: "Print a container's and its pod's status", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return c.inspect(cmd.Context(), args[0], inspectFormat) }}
	inspect.Flags().StringVar(&inspectFormat, "format", "json", "json or table")

	many := func(use, short string, fn func(context.Context, []string) error) *cobra.Command {
		return &cobra.Command{Use: use, Short: short, Args: cobra.MinimumNArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error { return fn(cmd.Context(), args) }}
	}
	none := func(use, short string, fn func(context.Context) error) *cobra.Command {
		return &cobra.Command{Use: use, Short: short, Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error { return fn(cmd.Context()) }}
	}
	root.AddCommand(run, ps, execCmd, logs, rm, stop, images, stats, usageCmd, pods,
		pull, cp,
		many("pause CONTAINER|POD...", "Pause the whole pod VM: its vCPUs stop until unpause (hyperlet only)",
			func(ctx context.Context, refs []string) error { return c.pause(ctx, false, refs) }),
		many("unpause CONTAINER|POD...", "Resume a paused pod VM (hyperlet only)",
			func(ctx context.Context, refs []string) error { return c.pause(ctx, true, refs) }),
		many("rmi IMAGE...", "Remove images", c.rmi),
		inspect,
		many("start CONTAINER...", "Start created containers", c.start),
		many("kill CONTAINER...", "Kill containers (SIGKILL now)", c.kill),
		none("version", "Print the runtime's name and versions", c.version),
		none("info", "Print the runtime's status: conditions, handlers, templates, pool", c.info),
		&cobra.Command{Use: "port-forward CONTAINER [LOCAL:]PORT...", Short: "Forward local ports to the pod's localhost (inside its VM)",
			Args: cobra.MinimumNArgs(2), RunE: func(cmd *cobra.Command, args []string) error { return c.portForward(cmd.Context(), args) }},
	)
	return root
}

func formatFlag(cmd *cobra.Command, v *string) {
	cmd.Flags().StringVar(v, "format", "table", "table or json")
}

// exitCode is a container's exit code, passed on as hyperctl's own.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit code %d", int(e)) }

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
