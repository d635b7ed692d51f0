package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// kill stops containers without a grace period (the CRI has no signal
// call: StopContainer with no timeout is SIGKILL).
func (c *cli) kill(ctx context.Context, args []string) error { return c.stop(ctx, 0, args) }

func (c *cli) start(ctx context.Context, args []string) error {
	for _, ref := range args {
		ct, err := c.container(ctx, ref)
		if err != nil {
			return err
		}
		if _, err := c.rs.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: ct.Id}); err != nil {
			return err
		}
		fmt.Println(shortID(ct.Id))
	}
	return nil
}

func (c *cli) version(ctx context.Context) error {
	v, err := c.rs.Version(ctx, &runtimeapi.VersionRequest{})
	if err != nil {
		return err
	}
	fmt.Printf("Runtime:     %s %s\nCRI version: %s\n", v.RuntimeName, v.RuntimeVersion, v.RuntimeApiVersion)
	return nil
}

// info prints the runtime's Status, verbose: conditions, handlers and
// their features, and what the runtime adds (hyperlet: its accelerator,
// templates and warm pool).
func (c *cli) info(ctx context.Context) error {
	st, err := c.rs.Status(ctx, &runtimeapi.StatusRequest{Verbose: true})
	if err != nil {
		return err
	}
	return printJSON(st)
}

func (c *cli) pods(ctx context.Context, format string) error {
	list, err := c.rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return err
	}
	if format == "json" {
		return printJSON(list.Items)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "POD ID\tCREATED\tSTATE\tNAMESPACE/NAME\tHANDLER")
	for _, p := range list.Items {
		state := strings.TrimPrefix(p.State.String(), "SANDBOX_")
		if p.State == runtimeapi.PodSandboxState_SANDBOX_READY && c.podPaused(ctx, p.Id) {
			state = "PAUSED"
		}
		fmt.Fprintf(w, "%s\t%s ago\t%s\t%s/%s\t%s\n", shortID(p.Id), age(p.CreatedAt), state,
			p.Metadata.GetNamespace(), p.Metadata.GetName(), p.RuntimeHandler)
	}
	return w.Flush()
}

// podPaused says whether hyperlet has the pod's VM paused (its verbose
// status says so; other runtimes' never do).
func (c *cli) podPaused(ctx context.Context, id string) bool {
	st, err := c.rs.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id, Verbose: true})
	if err != nil {
		return false
	}
	var info struct {
		Paused bool `json:"paused"`
	}
	return json.Unmarshal([]byte(st.Info["info"]), &info) == nil && info.Paused
}

// stats prints running containers' CPU (as a share of one core, over the
// last interval) and memory, like docker stats: refreshed every two
// seconds, or once.
func (c *cli) stats(ctx context.Context, once bool, refs []string) error {
	filter := map[string]bool{}
	for _, r := range refs {
		ct, err := c.container(ctx, r)
		if err != nil {
			return err
		}
		filter[ct.Id] = true
	}
	sample := func() (map[string]*runtimeapi.ContainerStats, error) {
		l, err := c.rs.ListContainerStats(ctx, &runtimeapi.ListContainerStatsRequest{})
		if err != nil {
			return nil, err
		}
		out := map[string]*runtimeapi.ContainerStats{}
		for _, s := range l.Stats {
			if len(filter) == 0 || filter[s.Attributes.GetId()] {
				out[s.Attributes.GetId()] = s
			}
		}
		return out, nil
	}
	prev, err := sample()
	if err != nil {
		return err
	}
	for {
		time.Sleep(time.Second)
		cur, err := sample()
		if err != nil {
			return err
		}
		if !once {
			fmt.Print("\033[H\033[2J") // clear the terminal, as docker stats does
		}
		ids := make([]string, 0, len(cur))
		for id := range cur {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "CONTAINER ID\tNAME\tCPU %\tMEM USAGE")
		for _, id := range ids {
			s, p := cur[id], prev[id]
			cpu := 0.0
			if p != nil && s.Cpu != nil && p.Cpu != nil && s.Cpu.Timestamp > p.Cpu.Timestamp {
				used := float64(s.Cpu.UsageCoreNanoSeconds.GetValue()) - float64(p.Cpu.UsageCoreNanoSeconds.GetValue())
				cpu = 100 * used / float64(s.Cpu.Timestamp-p.Cpu.Timestamp)
			}
			fmt.Fprintf(w, "%s\t%s\t%.1f%%\t%.1f MiB\n", shortID(id), s.Attributes.GetMetadata().GetName(), cpu,
				float64(s.Memory.GetWorkingSetBytes().GetValue())/(1<<20))
		}
		w.Flush()
		if once {
			return nil
		}
		prev = cur
		time.Sleep(time.Second)
	}
}
