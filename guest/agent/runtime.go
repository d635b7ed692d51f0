package main

import (
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
)

// runtimeSeals are the seals of a runtime binary copy that crun and runc
// trust as their own clone (CVE-2019-5736): a container cannot write
// through /proc/PID/exe to a file sealed so. Either runtime otherwise
// copies itself into a memfd and re-executes at every start, which costs
// a second process image each time (about 150 ms under TCG).
const runtimeSeals = unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE

// runtimeExe is the file the agent runs as the OCI runtime: a sealed
// in-memory copy of agentapi.RuntimePath made once, through this process's
// descriptor, or the path itself if the copy cannot be made.
var runtimeExe = sync.OnceValue(func() string {
	f, err := sealedCopy(agentapi.RuntimePath)
	if err != nil {
		klog.ErrorS(err, "no sealed copy of the OCI runtime; it will copy itself at every start", "runtime", agentapi.RuntimePath)
		return agentapi.RuntimePath
	}
	runtimeFile = f
	return fmt.Sprintf("/proc/self/fd/%d", f.Fd())
})

// runtimeFile keeps the sealed copy open for the agent's life.
var runtimeFile *os.File

// sealedCopy copies the file at path into a memfd sealed with
// runtimeSeals. The descriptor is close-on-exec: a child execs it by its
// /proc/self/fd path, and the runtime then holds the file as its image, not
// as a descriptor a container could inherit.
func sealedCopy(path string) (*os.File, error) {
	src, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	fd, err := unix.MemfdCreate("oci-runtime", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	dst := os.NewFile(uintptr(fd), "oci-runtime")
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return nil, fmt.Errorf("copy %s: %w", path, err)
	}
	if _, err := unix.FcntlInt(dst.Fd(), unix.F_ADD_SEALS, runtimeSeals); err != nil {
		dst.Close()
		return nil, fmt.Errorf("seal: %w", err)
	}
	return dst, nil
}
