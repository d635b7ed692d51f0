package cri

import (
	"context"
	"runtime/debug"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// LogUnary logs every CRI call (failures at level 0, successes at level 4:
// kubelet polls several calls every second) and maps errors to gRPC codes.
func LogUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	err = toGRPC(err)
	if err != nil {
		klog.ErrorS(err, "CRI call failed", "method", info.FullMethod, "duration", time.Since(start))
	} else {
		klog.V(4).InfoS("CRI call", "method", info.FullMethod, "duration", time.Since(start))
	}
	return resp, err
}

// RecoverUnary turns a panic in a handler into an Internal error: one bad
// request must not take down the node's runtime.
func RecoverUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	defer func() {
		if r := recover(); r != nil {
			klog.ErrorS(nil, "CRI handler panicked", "method", info.FullMethod, "panic", r, "stack", string(debug.Stack()))
			resp, err = nil, status.Errorf(codes.Internal, "internal error in %s", info.FullMethod)
		}
	}()
	return handler(ctx, req)
}

// RecoverStream is RecoverUnary for streaming calls.
func RecoverStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	defer func() {
		if r := recover(); r != nil {
			klog.ErrorS(nil, "CRI stream handler panicked", "method", info.FullMethod, "panic", r, "stack", string(debug.Stack()))
			err = status.Errorf(codes.Internal, "internal error in %s", info.FullMethod)
		}
	}()
	return handler(srv, ss)
}
