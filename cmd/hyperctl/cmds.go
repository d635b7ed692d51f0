package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func (c *cli) ps(ctx context.Context, all bool, format string) error {
	list, err := c.rs.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if err != nil {
		return err
	}
	var shown []*runtimeapi.Container
	for _, ct := range list.Containers {
		if all || ct.State == runtimeapi.ContainerState_CONTAINER_RUNNING {
			shown = append(shown, ct)
		}
	}
	if format == "json" {
		return printJSON(shown)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "CONTAINER ID\tIMAGE\tCREATED\tSTATE\tNAME\tPOD ID")
	for _, ct := range shown {
		state := strings.TrimPrefix(ct.State.String(), "CONTAINER_")
		fmt.Fprintf(w, "%s\t%s\t%s ago\t%s\t%s\t%s\n", shortID(ct.Id), ct.Image.GetImage(), age(ct.CreatedAt), state, ct.Metadata.GetName(), shortID(ct.PodSandboxId))
	}
	return w.Flush()
}

func (c *cli) exec(ctx context.Context, interactive, tty bool, args []string) error {
	ct, err := c.container(ctx, args[0])
	if err != nil {
		return err
	}
	r, err := c.rs.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: ct.Id, Cmd: args[1:],
		Stdin: interactive, Stdout: true, Stderr: !tty, Tty: tty})
	if err != nil {
		return err
	}
	return stream(ctx, r.Url, interactive, tty)
}

func (c *cli) logs(ctx context.Context, follow bool, ref string) error {
	ct, err := c.container(ctx, ref)
	if err != nil {
		return err
	}
	return c.follow(ctx, ct.Id, follow)
}

// follow prints a container's log (the CRI log file), joining partial
// records; with wait it keeps reading until the container has exited.
func (c *cli) follow(ctx context.Context, id string, wait bool) error {
	st, err := c.rs.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
	if err != nil {
		return err
	}
	path := st.Status.LogPath
	if path == "" {
		return fmt.Errorf("container %s has no log file", shortID(id))
	}
	var f *os.File
	for i := 0; ; i++ {
		if f, err = os.Open(path); err == nil {
			break
		}
		if !wait || i > 100 {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
	defer f.Close()
	r := bufio.NewReader(f)
	var pending string
	exited := false
	idle := 0 // polls in a row that found no new output
	for {
		line, err := r.ReadString('\n')
		if err == io.EOF {
			// Keep a partial line for the next read.
			pending += line
			if !wait || exited {
				return nil
			}
			st, serr := c.rs.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
			if serr != nil {
				return serr
			}
			if st.Status.State == runtimeapi.ContainerState_CONTAINER_EXITED {
				// A runtime reports the exit once the output is in the
				// log: one more pass picks up the last lines.
				exited = true
				continue
			}
			time.Sleep(pollDelay(idle))
			idle++
			continue
		}
		if err != nil {
			return err
		}
		idle = 0
		line, pending = pending+line, ""
		// <timestamp> <stream> <P|F> <content>
		parts := strings.SplitN(strings.TrimSuffix(line, "\n"), " ", 4)
		if len(parts) < 3 {
			continue
		}
		content := ""
		if len(parts) == 4 {
			content = parts[3]
		}
		if parts[2] == "F" {
			content += "\n"
		}
		out := os.Stdout
		if parts[1] == "stderr" {
			out = os.Stderr
		}
		io.WriteString(out, content)
	}
}

// pollDelay is the wait before the next status poll after n that found
// nothing new: short at first, so a command that exits at once is seen to
// at once, backing off to 100 ms for one that keeps running.
func pollDelay(n int) time.Duration {
	return min(5*time.Millisecond<<min(n, 5), 100*time.Millisecond)
}

func (c *cli) stop(ctx context.Context, timeout int64, args []string) error {
	for _, ref := range args {
		ct, err := c.container(ctx, ref)
		if err != nil {
			return err
		}
		if _, err := c.rs.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: ct.Id, Timeout: timeout}); err != nil {
			return err
		}
		fmt.Println(shortID(ct.Id))
	}
	return nil
}

func (c *cli) rm(ctx context.Context, force bool, args []string) error {
	for _, ref := range args {
		ct, err := c.container(ctx, ref)
		if err != nil {
			return err
		}
		if ct.State == runtimeapi.ContainerState_CONTAINER_RUNNING && !force {
			return fmt.Errorf("container %s is running (stop it or use -f)", shortID(ct.Id))
		}
		if _, err := c.rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: ct.PodSandboxId}); err != nil {
			return err
		}
		if _, err := c.rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: ct.PodSandboxId}); err != nil {
			return err
		}
		fmt.Println(shortID(ct.Id))
	}
	return nil
}

func (c *cli) images(ctx context.Context, format string) error {
	list, err := c.is.ListImages(ctx, &runtimeapi.ListImagesRequest{})
	if err != nil {
		return err
	}
	if format == "json" {
		return printJSON(list.Images)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "IMAGE\tIMAGE ID\tSIZE")
	for _, img := range list.Images {
		names := img.RepoTags
		if len(names) == 0 {
			names = []string{"<none>"}
		}
		for _, n := range names {
			fmt.Fprintf(w, "%s\t%s\t%.1f MiB\n", n, shortID(strings.TrimPrefix(img.Id, "sha256:")), float64(img.Size)/(1<<20))
		}
	}
	return w.Flush()
}

func (c *cli) rmi(ctx context.Context, args []string) error {
	for _, ref := range args {
		if _, err := c.is.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err != nil {
			return err
		}
		fmt.Println(ref)
	}
	return nil
}

func (c *cli) inspect(ctx context.Context, ref, format string) error {
	if format != "json" && format != "table" {
		return fmt.Errorf("--format %q: json or table", format)
	}
	ct, err := c.container(ctx, ref)
	if err != nil {
		return err
	}
	st, err := c.rs.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: ct.Id, Verbose: true})
	if err != nil {
		return err
	}
	ps, err := c.rs.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: ct.PodSandboxId})
	if err != nil {
		return err
	}
	if format == "json" {
		return printJSON(map[string]any{"container": st.Status, "pod": ps.Status})
	}
	cs, pod := st.Status, ps.Status
	when := func(ns int64) string {
		if ns == 0 {
			return "-"
		}
		return time.Unix(0, ns).UTC().Format(time.RFC3339)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(w, "%s\t%s\n", k, v) }
	row("Container", cs.Id)
	row("Name", cs.Metadata.GetName())
	row("Image", cs.Image.GetImage())
	row("Image ID", cs.ImageRef)
	row("State", strings.TrimPrefix(cs.State.String(), "CONTAINER_"))
	row("Created", when(cs.CreatedAt))
	row("Started", when(cs.StartedAt))
	if cs.State == runtimeapi.ContainerState_CONTAINER_EXITED {
		row("Finished", when(cs.FinishedAt))
		row("Exit code", fmt.Sprint(cs.ExitCode))
		row("Reason", cs.Reason)
	}
	row("Log", cs.LogPath)
	for _, m := range cs.Mounts {
		mode := "rw"
		if m.Readonly {
			mode = "ro"
		}
		src := m.HostPath
		if m.Image.GetImage() != "" {
			src = "image " + m.Image.GetImage()
		}
		row("Mount", fmt.Sprintf("%s -> %s (%s)", src, m.ContainerPath, mode))
	}
	row("Pod", pod.Id)
	row("Pod name", pod.Metadata.GetNamespace()+"/"+pod.Metadata.GetName())
	row("Pod state", strings.TrimPrefix(pod.State.String(), "SANDBOX_"))
	row("Runtime", pod.RuntimeHandler)
	if ip := pod.Network.GetIp(); ip != "" {
		row("IP", ip)
	}
	return w.Flush()
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
