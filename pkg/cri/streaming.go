package cri

import (
	"github.com/hyperlet/hyperlet/pkg/sandbox"
	"k8s.io/cri-streaming/pkg/streaming"
)

// Streamer hands out URLs on kubelet's streaming server (k8s.io/cri-streaming),
// which calls back into the runtime for Exec, Attach and PortForward.
type Streamer = streaming.Server

var _ streaming.Runtime = (*sandbox.Manager)(nil)

// WithStreaming sets the streaming server.
func WithStreaming(s Streamer) Option { return func(svc *Service) { svc.streamer = s } }
