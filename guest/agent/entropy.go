package main

import (
	"context"
	"encoding/binary"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
)

// AddEntropy credits the host's bytes to the input pool (RNDADDENTROPY) and
// forces a CRNG reseed (RNDRESEEDCRNG), so a clone's next random bytes
// differ from its template's and its siblings'.
func (s *service) AddEntropy(ctx context.Context, req *agentapi.AddEntropyRequest) (*agentapi.Empty, error) {
	n := len(req.Data)
	if n < 32 || n > 512 {
		return nil, status.Errorf(codes.InvalidArgument, "entropy: %d bytes, want 32 to 512", n)
	}
	f, err := os.OpenFile("/dev/random", os.O_WRONLY, 0)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "entropy: %v", err)
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	info := make([]byte, 8+(n+3)/4*4)
	binary.NativeEndian.PutUint32(info[0:], uint32(n*8))
	binary.NativeEndian.PutUint32(info[4:], uint32(n))
	copy(info[8:], req.Data)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&info[0]))); e != 0 {
		return nil, status.Errorf(codes.Internal, "entropy: RNDADDENTROPY: %v", e)
	}
	if err := unix.IoctlSetInt(int(f.Fd()), unix.RNDRESEEDCRNG, 0); err != nil {
		return nil, status.Errorf(codes.Internal, "entropy: RNDRESEEDCRNG: %v", err)
	}
	return &agentapi.Empty{}, nil
}
