package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/term"
	restclient "k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// labelName marks hyperctl's containers with their name.
const labelName = "io.hyperlet.hyperctl.name"

// logRoot is where hyperctl asks the runtime to write container logs.
const logRoot = "/var/log/hyperctl"

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// parseSize reads 64m, 1g, 512k or bytes.
func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch strings.ToLower(s[len(s)-1:]) {
	case "k":
		mult = 1 << 10
	case "m":
		mult = 1 << 20
	case "g":
		mult = 1 << 30
	}
	if mult > 1 {
		s = s[:len(s)-1]
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return n * mult, nil
}

func (c *cli) ensureImage(ctx context.Context, image string) error {
	st, err := c.is.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: image}})
	if err != nil {
		return err
	}
	if st.Image != nil {
		return nil
	}
	_, err = c.is.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: image}})
	return err
}

// runOpts are run's flags.
type runOpts struct {
	detach, rm, interactive, tty bool
	name, memory, network        string
	runtimeClass                 string
	cpus                         float64
	ports, volumes, envs         []string
}

func (c *cli) run(ctx context.Context, o *runOpts, args []string) error {
	detach, rm, interactive, tty := &o.detach, &o.rm, &o.interactive, &o.tty
	name, memory, cpus, network, runtimeClass := &o.name, &o.memory, &o.cpus, &o.network, &o.runtimeClass
	ports, volumes, envs := o.ports, o.volumes, o.envs
	image, cmd := args[0], args[1:]
	if *name == "" {
		*name = "hyperctl-" + randHex(3)
	}
	if *network != "" && *network != "host" {
		return fmt.Errorf("bad -net %q (only \"host\")", *network)
	}
	if err := c.ensureImage(ctx, image); err != nil {
		return fmt.Errorf("image %s: %w", image, err)
	}

	uid := randHex(8)
	pod := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: *name, Namespace: "hyperctl", Uid: uid},
		Hostname:     *name,
		LogDirectory: filepath.Join(logRoot, *name+"_"+uid),
		Labels:       map[string]string{labelName: *name},
		Linux:        &runtimeapi.LinuxPodSandboxConfig{},
	}
	res := &runtimeapi.LinuxContainerResources{}
	if *memory != "" {
		n, err := parseSize(*memory)
		if err != nil {
			return err
		}
		res.MemoryLimitInBytes = n
	}
	if *cpus > 0 {
		res.CpuPeriod, res.CpuQuota = 100000, int64(*cpus*100000)
	}
	pod.Linux.Resources = res
	if *network == "host" {
		pod.Hostname = "" // the node's
		pod.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}}
	}
	for _, p := range ports {
		proto := runtimeapi.Protocol_TCP
		if strings.HasSuffix(p, "/udp") {
			proto, p = runtimeapi.Protocol_UDP, strings.TrimSuffix(p, "/udp")
		}
		h, ctr, ok := strings.Cut(strings.TrimSuffix(p, "/tcp"), ":")
		hp, err1 := strconv.Atoi(h)
		cp, err2 := strconv.Atoi(ctr)
		if !ok || err1 != nil || err2 != nil {
			return fmt.Errorf("bad -p %q (want HOST:POD)", p)
		}
		pod.PortMappings = append(pod.PortMappings, &runtimeapi.PortMapping{Protocol: proto, HostPort: int32(hp), ContainerPort: int32(cp)})
	}
	ctr := &runtimeapi.ContainerConfig{
		Metadata:  &runtimeapi.ContainerMetadata{Name: *name},
		Image:     &runtimeapi.ImageSpec{Image: image},
		Args:      cmd,
		Stdin:     *interactive,
		StdinOnce: *interactive && !*detach,
		Tty:       *tty,
		LogPath:   "0.log",
		Labels:    map[string]string{labelName: *name},
		Linux:     &runtimeapi.LinuxContainerConfig{Resources: res},
	}
	for _, e := range envs {
		k, v, _ := strings.Cut(e, "=")
		ctr.Envs = append(ctr.Envs, &runtimeapi.KeyValue{Key: k, Value: []byte(v)})
	}
	for _, v := range volumes {
		parts := strings.Split(v, ":")
		if len(parts) < 2 {
			return fmt.Errorf("bad -v %q (want HOST:CTR[:ro])", v)
		}
		host, err := filepath.Abs(parts[0])
		if err != nil {
			return err
		}
		ctr.Mounts = append(ctr.Mounts, &runtimeapi.Mount{HostPath: host, ContainerPath: parts[1], Readonly: len(parts) > 2 && parts[2] == "ro"})
	}

	pr, err := c.rs.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: pod, RuntimeHandler: *runtimeClass})
	if err != nil {
		return fmt.Errorf("start pod: %w", err)
	}
	removePod := func() {
		c.rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pr.PodSandboxId})
		c.rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pr.PodSandboxId})
	}
	cr, err := c.rs.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: pr.PodSandboxId, Config: ctr, SandboxConfig: pod})
	if err != nil {
		removePod()
		return fmt.Errorf("create container: %w", err)
	}
	if _, err := c.rs.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: cr.ContainerId}); err != nil {
		removePod()
		return fmt.Errorf("start container: %w", err)
	}
	if *detach {
		fmt.Println(cr.ContainerId)
		return nil
	}
	if *interactive || *tty {
		err = c.attach(ctx, cr.ContainerId, *interactive, *tty)
	} else {
		err = c.follow(ctx, cr.ContainerId, true)
	}
	if err != nil {
		return err
	}
	st, err := c.waitExit(ctx, cr.ContainerId)
	if *rm {
		removePod()
	}
	if err != nil {
		return err
	}
	if st.ExitCode != 0 {
		return exitCode(st.ExitCode)
	}
	return nil
}

func (c *cli) waitExit(ctx context.Context, id string) (*runtimeapi.ContainerStatus, error) {
	for n := 0; ; n++ {
		st, err := c.rs.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
		if err != nil {
			return nil, err
		}
		if st.Status.State == runtimeapi.ContainerState_CONTAINER_EXITED {
			return st.Status, nil
		}
		time.Sleep(pollDelay(n))
	}
}

// attach connects this terminal to the container through the streaming
// server.
func (c *cli) attach(ctx context.Context, id string, stdin, tty bool) error {
	r, err := c.rs.Attach(ctx, &runtimeapi.AttachRequest{ContainerId: id, Stdin: stdin, Stdout: true, Stderr: !tty, Tty: tty})
	if err != nil {
		return err
	}
	return stream(ctx, r.Url, stdin, tty)
}

// stream connects this terminal to a CRI streaming URL.
func stream(ctx context.Context, rawURL string, stdin, tty bool) error {
	opts := remotecommand.StreamOptions{Stdout: os.Stdout, Tty: tty}
	if !tty {
		opts.Stderr = os.Stderr
	}
	if stdin {
		opts.Stdin = os.Stdin
	}
	if tty && term.IsTerminal(int(os.Stdin.Fd())) {
		old, err := term.MakeRaw(int(os.Stdin.Fd()))
		if err == nil {
			defer term.Restore(int(os.Stdin.Fd()), old)
		}
		if w, h, err := term.GetSize(int(os.Stdin.Fd())); err == nil {
			opts.TerminalSizeQueue = &oneSize{size: remotecommand.TerminalSize{Width: uint16(w), Height: uint16(h)}}
		}
	}
	return spdyStream(ctx, rawURL, opts)
}

// spdyStream runs a CRI streaming URL (exec, attach) with opts.
func spdyStream(ctx context.Context, rawURL string, opts remotecommand.StreamOptions) error {
	u, err := url.Parse(rawURL)
	if err != nil {
		return err
	}
	ex, err := remotecommand.NewSPDYExecutor(&restclient.Config{}, "POST", u)
	if err != nil {
		return err
	}
	return ex.StreamWithContext(ctx, opts)
}

type oneSize struct {
	size remotecommand.TerminalSize
	sent bool
}

func (o *oneSize) Next() *remotecommand.TerminalSize {
	if o.sent {
		select {}
	}
	o.sent = true
	return &o.size
}
