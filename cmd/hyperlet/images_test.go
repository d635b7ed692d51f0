package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hyperlet/hyperlet/pkg/imageservice/imagetest"
)

// TestImageServiceOverCRI pulls, lists, inspects and removes images from a
// real registry through hyperlet's CRI socket, the registry reached as a
// mirror of another name, as on an air-gapped node.
func TestImageServiceOverCRI(t *testing.T) {
	r := imagetest.StartRegistry(t, "", "")
	base := imagetest.Layer(t, map[string]string{"etc/passwd": "root:x:0:0::/root:/bin/sh\n"})
	r.Push(t, "e2e-test-images/busybox:1.29-2", imagetest.Image(t, base, "busybox", "1002"))
	r.Push(t, "pause:3.10", imagetest.Image(t, base, "pause", "nobody"))

	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("[registry.mirrors.\"registry.k8s.io\"]\nendpoint = [\"http://%s\"]\n", r.Host)), 0o644)
	d := startDaemonWithConfig(t, buildDaemon(t), dir, cfg)

	conn, err := grpc.NewClient("unix://"+d.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	is := runtimeapi.NewImageServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	spec := func(s string) *runtimeapi.ImageSpec { return &runtimeapi.ImageSpec{Image: s} }

	fs0, err := is.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	pulled, err := is.PullImage(ctx, &runtimeapi.PullImageRequest{Image: spec("registry.k8s.io/e2e-test-images/busybox:1.29-2")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := is.PullImage(ctx, &runtimeapi.PullImageRequest{Image: spec("registry.k8s.io/pause:3.10")}); err != nil {
		t.Fatal(err)
	}
	st, err := is.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: spec(pulled.ImageRef), Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	if st.Image == nil || st.Image.Id != pulled.ImageRef || st.Image.Uid.GetValue() != 1002 ||
		st.Image.RepoTags[0] != "registry.k8s.io/e2e-test-images/busybox:1.29-2" || st.Info["info"] == "" {
		t.Fatalf("ImageStatus = %+v", st)
	}
	pause, _ := is.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: spec("registry.k8s.io/pause:3.10")})
	if pause.Image == nil || pause.Image.Username != "nobody" {
		t.Fatalf("pause status = %+v", pause)
	}
	list, err := is.ListImages(ctx, &runtimeapi.ListImagesRequest{})
	if err != nil || len(list.Images) != 2 {
		t.Fatalf("ListImages = %v, %v", list, err)
	}
	filtered, _ := is.ListImages(ctx, &runtimeapi.ListImagesRequest{Filter: &runtimeapi.ImageFilter{Image: spec("registry.k8s.io/pause:3.10")}})
	if len(filtered.Images) != 1 || filtered.Images[0].RepoTags[0] != "registry.k8s.io/pause:3.10" {
		t.Fatalf("filtered ListImages = %v", filtered)
	}
	fs1, _ := is.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
	if fs1.ImageFilesystems[0].UsedBytes.Value <= fs0.ImageFilesystems[0].UsedBytes.Value {
		t.Errorf("ImageFsInfo did not grow with pulls: %d -> %d", fs0.ImageFilesystems[0].UsedBytes.Value, fs1.ImageFilesystems[0].UsedBytes.Value)
	}

	// Bad input gets a clear code and the daemon keeps serving.
	tests := []struct {
		name string
		call func() error
		code codes.Code
	}{
		{"empty image", func() error { _, err := is.PullImage(ctx, &runtimeapi.PullImageRequest{Image: spec("")}); return err }, codes.InvalidArgument},
		{"malformed name", func() error {
			_, err := is.PullImage(ctx, &runtimeapi.PullImageRequest{Image: spec("Not A Name")})
			return err
		}, codes.InvalidArgument},
		{"missing repository", func() error {
			_, err := is.PullImage(ctx, &runtimeapi.PullImageRequest{Image: spec("registry.k8s.io/nope:1")})
			return err
		}, codes.NotFound},
		{"remove missing image", func() error {
			_, err := is.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: spec("registry.k8s.io/nope:1")})
			return err
		}, codes.OK},
	}
	for _, tc := range tests {
		if got := status.Code(tc.call()); got != tc.code {
			t.Errorf("%s: code %v, want %v", tc.name, got, tc.code)
		}
	}

	if _, err := is.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: spec("registry.k8s.io/pause:3.10")}); err != nil {
		t.Fatal(err)
	}
	gone, _ := is.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: spec("registry.k8s.io/pause:3.10")})
	if gone.Image != nil {
		t.Errorf("removed image still has status %+v", gone.Image)
	}
	fs2, _ := is.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
	if fs2.ImageFilesystems[0].UsedBytes.Value >= fs1.ImageFilesystems[0].UsedBytes.Value {
		t.Errorf("ImageFsInfo did not shrink with a removal: %d -> %d", fs1.ImageFilesystems[0].UsedBytes.Value, fs2.ImageFilesystems[0].UsedBytes.Value)
	}
	criVersion(t, d.socket)
}

// TestPullSurvivesDaemonKill kills the daemon with SIGKILL in the middle of
// pulling a large image: after a restart nothing half-written is left and
// the same pull succeeds.
func TestPullSurvivesDaemonKill(t *testing.T) {
	r := imagetest.StartRegistry(t, "", "")
	big := make([]byte, 48<<20)
	rand.Read(big) // incompressible: the pull takes a while
	layer := imagetest.Layer(t, map[string]string{"big": string(big)})
	r.Push(t, "big:1", imagetest.Image(t, layer, "big", ""))

	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("[registry.mirrors.\"registry.k8s.io\"]\nendpoint = [\"http://%s\"]\n", r.Host)), 0o644)
	bin := buildDaemon(t)
	d := startDaemonWithConfig(t, bin, dir, cfg)
	pull := func(socket string, timeout time.Duration) error {
		conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		_, err = runtimeapi.NewImageServiceClient(conn).PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: "registry.k8s.io/big:1"}})
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- pull(d.socket, time.Minute) }()
	// Kill once the layer download has begun.
	tmp := filepath.Join(d.root, "images", "content", "tmp")
	for i := 0; i < 200; i++ {
		if ents, _ := os.ReadDir(tmp); len(ents) > 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	d.cmd.Process.Kill()
	d.cmd.Wait()
	if err := <-errc; err == nil {
		t.Log("the pull finished before the kill; the restart below still checks the store")
	}

	d2 := startDaemonWithConfig(t, bin, dir, cfg)
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Errorf("partial downloads left after restart: %d", len(ents))
	}
	if err := pull(d2.socket, time.Minute); err != nil {
		t.Fatalf("pull after the crash: %v", err)
	}
}
