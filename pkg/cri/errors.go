package cri

import (
	"context"
	"errors"
	"net/http"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hyperlet/hyperlet/pkg/agent"
	"github.com/hyperlet/hyperlet/pkg/imageservice"
	"github.com/hyperlet/hyperlet/pkg/imageservice/unpack"
	"github.com/hyperlet/hyperlet/pkg/jail"
	"github.com/hyperlet/hyperlet/pkg/sandbox"
)

// toGRPC maps an error from the layers below to a gRPC status. It is the
// only place that does: handlers return wrapped errors.
func toGRPC(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	code := codes.Unknown
	var terr *transport.Error
	switch {
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, imageservice.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, imageservice.ErrInvalidReference), errors.Is(err, errInvalid), errors.Is(err, unpack.ErrUnsafeLayer):
		code = codes.InvalidArgument
	case errors.Is(err, errUnavailable):
		code = codes.FailedPrecondition
	case errors.Is(err, sandbox.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, sandbox.ErrAlreadyExists):
		code = codes.AlreadyExists
	case errors.Is(err, sandbox.ErrInvalid):
		code = codes.InvalidArgument
	case errors.Is(err, sandbox.ErrNotReady), errors.Is(err, sandbox.ErrUnsupported), errors.Is(err, imageservice.ErrInUse):
		code = codes.FailedPrecondition
	case errors.Is(err, imageservice.ErrNoSpace), errors.Is(err, jail.ErrExhausted):
		code = codes.ResourceExhausted
	case errors.Is(err, sandbox.ErrUnimplemented):
		code = codes.Unimplemented
	case errors.Is(err, sandbox.ErrExecTimeout):
		code = codes.DeadlineExceeded
	case errors.Is(err, agent.ErrUnavailable):
		code = codes.Unavailable
	case errors.Is(err, imageservice.ErrDigestMismatch):
		code = codes.DataLoss
	case errors.As(err, &terr):
		switch terr.StatusCode {
		case http.StatusUnauthorized:
			code = codes.Unauthenticated
		case http.StatusForbidden:
			code = codes.PermissionDenied
		case http.StatusNotFound:
			code = codes.NotFound
		default:
			code = codes.Unavailable
		}
	}
	return status.Error(code, err.Error())
}

var (
	// errInvalid marks a malformed CRI request.
	errInvalid = errors.New("invalid request")
	// errUnavailable marks a part of the runtime that is not set up.
	errUnavailable = errors.New("not available")
)
