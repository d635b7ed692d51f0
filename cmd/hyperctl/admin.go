package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"golang.org/x/term"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hyperlet/hyperlet/pkg/imageservice"
)

// adminDo calls hyperlet's admin endpoint (a unix socket beside the CRI
// socket) and decodes a JSON answer into out, if set.
func (c *cli) adminDo(ctx context.Context, method, path string, out any) error {
	c.adminOnce.Do(func() {
		// One client: its connection is reused by every call.
		c.admin = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", c.adminSocket)
			},
		}}
	})
	hc := c.admin
	req, err := http.NewRequestWithContext(ctx, method, "http://hyperlet"+path, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("admin endpoint %s (hyperlet only): %w", c.adminSocket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("%s", strings.TrimSpace(string(msg)))
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// pause stops (or with resume, starts again) the whole pod VM of each
// container or pod named.
func (c *cli) pause(ctx context.Context, resume bool, refs []string) error {
	verb := "pause"
	if resume {
		verb = "unpause"
	}
	for _, ref := range refs {
		podID, err := c.podOf(ctx, ref)
		if err != nil {
			return err
		}
		if err := c.adminDo(ctx, http.MethodPost, "/pods/"+podID+"/"+verb, nil); err != nil {
			return fmt.Errorf("%s %s: %w", verb, ref, err)
		}
		fmt.Println(ref)
	}
	return nil
}

// podOf finds the pod of a container, or a pod by ID prefix or name.
func (c *cli) podOf(ctx context.Context, ref string) (string, error) {
	if ct, err := c.container(ctx, ref); err == nil {
		return ct.PodSandboxId, nil
	}
	list, err := c.rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return "", err
	}
	var found []string
	for _, p := range list.Items {
		if strings.HasPrefix(p.Id, ref) || p.Metadata.GetName() == ref {
			found = append(found, p.Id)
		}
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("no container or pod %q", ref)
	case 1:
		return found[0], nil
	}
	return "", fmt.Errorf("%q names %d pods", ref, len(found))
}

// pull pulls an image; on a terminal, against hyperlet, it shows the bytes
// arriving.
func (c *cli) pull(ctx context.Context, ref string, quiet bool) error {
	done := make(chan struct{})
	shown := make(chan struct{})
	if quiet || !term.IsTerminal(int(os.Stderr.Fd())) {
		close(shown)
	} else {
		go func() {
			defer close(shown)
			c.showPull(ctx, ref, done)
		}()
	}
	r, err := c.is.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
	close(done)
	<-shown
	if err != nil {
		return err
	}
	fmt.Println(r.ImageRef)
	return nil
}

// showPull prints the progress of the pull of ref on one line of stderr
// until done.
func (c *cli) showPull(ctx context.Context, ref string, done <-chan struct{}) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	printed := false
	for {
		select {
		case <-done:
			if printed {
				fmt.Fprintln(os.Stderr)
			}
			return
		case <-tick.C:
		}
		var pulls []imageservice.PullProgress
		if err := c.adminDo(ctx, http.MethodGet, "/pulls", &pulls); err != nil {
			return // not hyperlet, or not reachable: pull silently
		}
		for _, p := range pulls {
			if !sameImage(p.Ref, ref) {
				continue
			}
			fmt.Fprintf(os.Stderr, "\r%s: %s", ref, progressLine(p))
			printed = true
		}
	}
}

// sameImage compares a normalised reference with what the user typed.
func sameImage(normalised, typed string) bool {
	n, err := imageservice.Normalize(typed)
	return err == nil && n.String() == normalised
}

func progressLine(p imageservice.PullProgress) string {
	mib := func(n int64) float64 { return float64(n) / (1 << 20) }
	if p.Bytes == 0 {
		return fmt.Sprintf("resolving (%s)", time.Since(p.Started).Round(time.Second))
	}
	return fmt.Sprintf("%.1f/%.1f MiB, %d/%d layers (%s)   ", mib(p.BytesDone), mib(p.Bytes),
		p.LayersDone, p.Layers, time.Since(p.Started).Round(time.Second))
}
