package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hyperlet/hyperlet/pkg/imageservice/imagetest"
)

// TestCRIImageVolumes: an image mounted as a volume (Mount.image) is
// visible read-only, executable, whole or from a sub path; its digest is
// in ContainerStatus; it cannot be removed while a container uses it; and
// a writable one or a sub path outside or missing from the image is
// refused without leaving a pin behind.
func TestCRIImageVolumes(t *testing.T) {
	d := startCRI(t)
	ctx := testCtx(t, 4*time.Minute)
	d.pull(ctx)
	data, err := mutate.AppendLayers(imagetest.BusyboxImage(t), imagetest.Layer(t, map[string]string{"data/hello": "hi from the image\n"}))
	if err != nil {
		t.Fatal(err)
	}
	d.reg.Push(t, "hyperlet-test/data:1", data)
	const dataRef = "registry.k8s.io/hyperlet-test/data:1"
	pr, err := d.is.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: dataRef}})
	if err != nil {
		t.Fatal(err)
	}
	dataID := pr.ImageRef
	podCfg := podConfig("imagevol")
	pod := d.runPod(ctx, podCfg)
	vol := func(path, sub string, ro bool) *runtimeapi.Mount {
		return &runtimeapi.Mount{ContainerPath: path, Readonly: ro, ImageSubPath: sub, Image: &runtimeapi.ImageSpec{Image: dataRef}}
	}

	for name, m := range map[string]*runtimeapi.Mount{
		"writable":         vol("/vol", "", false),
		"sub path outside": vol("/vol", "../etc", true),
		"relative path":    vol("vol", "", true),
		"unknown image":    {ContainerPath: "/vol", Readonly: true, Image: &runtimeapi.ImageSpec{Image: "registry.k8s.io/hyperlet-test/none:1"}},
		"missing sub path": vol("/vol", "not-existing", true),
		"missing nested":   vol("/vol", "data/not-existing", true),
	} {
		c := ctrConfig("bad", "true")
		c.Mounts = []*runtimeapi.Mount{m}
		_, err := d.rs.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: pod, Config: c, SandboxConfig: podCfg})
		switch {
		case strings.HasPrefix(name, "missing"):
			// The guest finds that out; its code is not passed on.
			if err == nil {
				t.Errorf("image volume %s: created", name)
			}
		case name == "unknown image":
			wantCode(t, "image volume "+name, err, codes.NotFound)
		default:
			wantCode(t, "image volume "+name, err, codes.InvalidArgument)
		}
	}
	if l, err := d.rs.ListContainers(ctx, &runtimeapi.ListContainersRequest{}); err != nil || len(l.Containers) != 0 {
		t.Fatalf("containers after refused creates: %v %v", l, err)
	}

	c := ctrConfig("reader", "sleep", "1000")
	c.Mounts = []*runtimeapi.Mount{vol("/vol", "", true), vol("/sub", "data", true)}
	id := d.createStart(ctx, pod, podCfg, c)
	r, err := d.exec(ctx, id, 0, "sh", "-c", "cat /sub/hello; /vol/bin/ls /vol/data; test -e /sub/data || echo sub; touch /vol/x 2>&1; touch /sub/x 2>&1")
	if err != nil {
		t.Fatal(err)
	}
	out := string(r.Stdout)
	for _, want := range []string{"hi from the image\n", "hello\n", "sub\n", "touch: /vol/x: Read-only file system", "touch: /sub/x: Read-only file system"} {
		if !strings.Contains(out, want) {
			t.Errorf("image volumes: output lacks %q:\n%s", want, out)
		}
	}
	var refs []string
	for _, m := range d.status(ctx, id).Mounts {
		refs = append(refs, m.ContainerPath+"="+m.GetImage().GetImageRef())
	}
	if want := "/vol=" + dataID + " /sub=" + dataID; strings.Join(refs, " ") != want {
		t.Errorf("status mounts %v, want %s", refs, want)
	}
	_, err = d.is.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: dataID}})
	wantCode(t, "removing an image a volume uses", err, codes.FailedPrecondition)

	if _, err := d.rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatal(err)
	}
	// No pin outlives the containers, the refused ones included.
	if _, err := d.is.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: dataID}}); err != nil {
		t.Errorf("RemoveImage after the pod: %v", err)
	}
}
