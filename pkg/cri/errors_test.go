package cri

import (
	"context"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hyperlet/hyperlet/pkg/agent"
	"github.com/hyperlet/hyperlet/pkg/sandbox"
)

func TestToGRPC(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want codes.Code
	}{
		{"not found", fmt.Errorf("pod x: %w", sandbox.ErrNotFound), codes.NotFound},
		{"invalid", fmt.Errorf("%w: bad", errInvalid), codes.InvalidArgument},
		{"deadline", fmt.Errorf("exec: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{"agent gone", fmt.Errorf("x: %w", agent.ErrUnavailable), codes.Unavailable},
		// The guest's own codes never reach the caller.
		{"guest says not found", fmt.Errorf("start: %w", &agent.GuestError{Op: "start", Code: codes.NotFound, Message: "no"}), codes.Unknown},
		{"guest says permission denied", &agent.GuestError{Op: "exec", Code: codes.PermissionDenied}, codes.Unknown},
		{"our own status", status.Error(codes.Aborted, "ours"), codes.Aborted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := status.Code(toGRPC(tc.err)); got != tc.want {
				t.Errorf("toGRPC(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}
