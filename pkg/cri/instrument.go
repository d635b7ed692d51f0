package cri

import (
	"context"
	"time"

	"google.golang.org/grpc"
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
