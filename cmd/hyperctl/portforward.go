package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"

	restclient "k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// portForward forwards local ports to ports on the pod's localhost (inside
// its VM) until interrupted: `hyperctl port-forward web 8080:80`.
func (c *cli) portForward(ctx context.Context, args []string) error {
	ct, err := c.container(ctx, args[0])
	if err != nil {
		return err
	}
	var ports []int32
	for _, p := range args[1:] {
		_, remote, ok := strings.Cut(p, ":")
		if !ok {
			remote = p
		}
		var n int32
		if _, err := fmt.Sscan(remote, &n); err != nil {
			return fmt.Errorf("bad port %q", p)
		}
		ports = append(ports, n)
	}
	r, err := c.rs.PortForward(ctx, &runtimeapi.PortForwardRequest{PodSandboxId: ct.PodSandboxId, Port: ports})
	if err != nil {
		return err
	}
	u, err := url.Parse(r.Url)
	if err != nil {
		return err
	}
	rt, upgrader, err := spdy.RoundTripperFor(&restclient.Config{})
	if err != nil {
		return err
	}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: rt}, "POST", u)
	stop := make(chan struct{})
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() { <-sigs; close(stop) }()
	fw, err := portforward.New(dialer, args[1:], stop, nil, os.Stdout, os.Stderr)
	if err != nil {
		return err
	}
	return fw.ForwardPorts()
}
