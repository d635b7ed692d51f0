package sandbox

import (
	"errors"
	"fmt"
)

var (
	// ErrNotFound: no pod or container with that ID.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: the name is taken.
	ErrAlreadyExists = errors.New("already exists")
	// ErrInvalid: the request is malformed.
	ErrInvalid = errors.New("invalid request")
	// ErrNotReady: the object is not in a state that allows the call (a
	// stopped pod, a container that is not running...).
	ErrNotReady = errors.New("not ready")
	// ErrPaused: the pod's VM is paused, so nothing in it can answer.
	ErrPaused = fmt.Errorf("pod VM is paused: %w", ErrNotReady)
	// ErrUnimplemented: a CRI feature hyperlet does not implement yet.
	ErrUnimplemented = errors.New("not implemented")
	// ErrUnsupported: hyperlet cannot do this inside a pod VM.
	ErrUnsupported = errors.New("unsupported")
)
