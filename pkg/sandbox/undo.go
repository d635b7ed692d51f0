package sandbox

import (
	"fmt"
	"runtime/debug"

	"k8s.io/klog/v2"
)

// undo, deferred in a function with a named error result, runs fn if that
// function fails: returns an error or panics. A panic becomes the error
// (logged with its stack), so that every undo deferred before this one runs
// too and nothing the function made is left behind; the daemon goes on
// serving.
func undo(retErr *error, fn func()) {
	if r := recover(); r != nil {
		klog.ErrorS(nil, "panic; undoing what the call made", "panic", r, "stack", string(debug.Stack()))
		*retErr = fmt.Errorf("internal error: %v", r)
	}
	if *retErr != nil {
		fn()
	}
}
