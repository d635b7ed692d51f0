package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	restclient "k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	utilexec "k8s.io/utils/exec"
)

// exitCode extracts the exit code client-go reports for a failed command.
func exitCode(err error) int {
	var ee utilexec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitStatus()
	}
	if err != nil {
		return -1
	}
	return 0
}

func executor(t *testing.T, rawURL string, websocket bool) remotecommand.Executor {
	t.Helper()
	var ex remotecommand.Executor
	var err error
	if websocket {
		// kubelet's streaming server speaks the channel.k8s.io protocols up
		// to v4 over WebSocket (v5 is the API server's).
		ex, err = remotecommand.NewWebSocketExecutorForProtocols(&restclient.Config{}, "GET", rawURL, "v4.channel.k8s.io")
	} else {
		u, _ := url.Parse(rawURL)
		ex, err = remotecommand.NewSPDYExecutor(&restclient.Config{}, "POST", u)
	}
	if err != nil {
		t.Fatal(err)
	}
	return ex
}

type fixedSize struct{ sent bool }

func (f *fixedSize) Next() *remotecommand.TerminalSize {
	if f.sent {
		select {} // no more resizes; the stream ends the executor
	}
	f.sent = true
	return &remotecommand.TerminalSize{Width: 91, Height: 27}
}

// TestCRIStreaming drives kubelet's streaming server as kubectl would, with
// client-go's SPDY and WebSocket executors: exec with exit codes, stdin,
// a tty and its size, a 64 MiB output and a closed stdin; attach to a
// container's stdio; and port-forward to a port only the pod's localhost
// serves, inside the VM.
func TestCRIStreaming(t *testing.T) {
	d := startCRI(t)
	ctx := testCtx(t, 5*time.Minute)
	d.pull(ctx)
	podCfg := podConfig("stream")
	pod := d.runPod(ctx, podCfg)
	// httpd on the pod's loopback only: reachable just from inside the VM.
	srv := d.createStart(ctx, pod, podCfg, ctrConfig("srv", "sh", "-c", "mkdir -p /tmp/w && echo inside > /tmp/w/i && exec httpd -f -p 127.0.0.1:8080 -h /tmp/w"))

	execURL := func(cmd []string, stdin, tty bool) string {
		r, err := d.rs.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: srv, Cmd: cmd, Stdin: stdin, Stdout: true, Stderr: !tty, Tty: tty})
		if err != nil {
			t.Fatal(err)
		}
		return r.Url
	}
	for _, ws := range []bool{false, true} {
		name := map[bool]string{false: "spdy", true: "websocket"}[ws]
		t.Run(name+"/exit code and streams", func(t *testing.T) {
			var out, errb bytes.Buffer
			err := executor(t, execURL([]string{"sh", "-c", "echo out; echo err >&2; exit 3"}, false, false), ws).
				StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &out, Stderr: &errb})
			if exitCode(err) != 3 || out.String() != "out\n" || errb.String() != "err\n" {
				t.Errorf("err %v, stdout %q, stderr %q", err, out.String(), errb.String())
			}
		})
		t.Run(name+"/stdin", func(t *testing.T) {
			in := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
			var out bytes.Buffer
			// head, not cat: WebSocket up to v4 cannot signal the end of
			// stdin (the closed-stdin case is tested over SPDY below).
			err := executor(t, execURL([]string{"head", "-c", fmt.Sprint(len(in))}, true, false), ws).
				StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: bytes.NewReader(in), Stdout: &out, Stderr: io.Discard})
			if err != nil || !bytes.Equal(out.Bytes(), in) {
				t.Errorf("cat: %v, %d bytes back of %d", err, out.Len(), len(in))
			}
		})
		t.Run(name+"/tty", func(t *testing.T) {
			var out bytes.Buffer
			err := executor(t, execURL([]string{"sh", "-c", "sleep 0.5; stty size; tty"}, false, true), ws).
				StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &out, Tty: true, TerminalSizeQueue: &fixedSize{}})
			if err != nil || !strings.Contains(out.String(), "27 91") || !strings.Contains(out.String(), "/dev/pts/") {
				t.Errorf("tty: %v, %q", err, out.String())
			}
		})
	}
	t.Run("64 MiB out", func(t *testing.T) {
		h := sha256.New()
		n := &countWriter{w: h}
		err := executor(t, execURL([]string{"head", "-c", "67108864", "/dev/zero"}, false, false), false).
			StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: n, Stderr: io.Discard})
		want := sha256.Sum256(make([]byte, 64<<20))
		if err != nil || n.n != 64<<20 || !bytes.Equal(h.Sum(nil), want[:]) {
			t.Errorf("64 MiB exec: %v, %d bytes", err, n.n)
		}
	})
	t.Run("client gone", func(t *testing.T) {
		// An exec whose client goes away takes its process along (at its
		// next output: the streaming server does not report the close).
		sctx, cancel := context.WithCancel(ctx)
		started := &signalWriter{match: "started", seen: make(chan struct{})}
		done := make(chan error, 1)
		go func() {
			done <- executor(t, execURL([]string{"sh", "-c", "echo started; while :; do echo tick; sleep 1; done"}, false, false), false).
				StreamWithContext(sctx, remotecommand.StreamOptions{Stdout: started, Stderr: io.Discard})
		}()
		select {
		case <-started.seen:
		case <-time.After(time.Minute):
			t.Fatal("the exec did not start")
		}
		cancel()
		<-done
		deadline := time.Now().Add(30 * time.Second)
		for {
			r, err := d.rs.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: srv, Cmd: []string{"sh", "-c", "ps | grep -c '[e]cho tick' || true"}, Timeout: 30})
			if err == nil && strings.TrimSpace(string(r.Stdout)) == "0" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the exec'd process still runs after its client went away: %v %q", err, r.GetStdout())
			}
			time.Sleep(500 * time.Millisecond)
		}
	})
	t.Run("closed stdin", func(t *testing.T) {
		var out bytes.Buffer
		err := executor(t, execURL([]string{"sh", "-c", "cat; echo done"}, true, false), false).
			StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: strings.NewReader(""), Stdout: &out, Stderr: io.Discard})
		if err != nil || out.String() != "done\n" {
			t.Errorf("closed stdin: %v %q", err, out.String())
		}
	})

	t.Run("attach", func(t *testing.T) {
		cfg := ctrConfig("reader", "sh", "-c", "read line; echo got $line; read line; echo again $line")
		cfg.Stdin = true
		rd := d.createStart(ctx, pod, podCfg, cfg)
		r, err := d.rs.Attach(ctx, &runtimeapi.AttachRequest{ContainerId: rd, Stdin: true, Stdout: true, Stderr: true})
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		err = executor(t, r.Url, false).StreamWithContext(ctx, remotecommand.StreamOptions{
			Stdin: strings.NewReader("one\ntwo\n"), Stdout: &out, Stderr: io.Discard})
		if err != nil || out.String() != "got one\nagain two\n" {
			t.Errorf("attach: %v, %q", err, out.String())
		}
		if st := d.waitExited(ctx, rd); st.ExitCode != 0 {
			t.Errorf("reader exit %d", st.ExitCode)
		}
	})

	t.Run("port-forward", func(t *testing.T) {
		r, err := d.rs.PortForward(ctx, &runtimeapi.PortForwardRequest{PodSandboxId: pod, Port: []int32{8080}})
		if err != nil {
			t.Fatal(err)
		}
		u, _ := url.Parse(r.Url)
		rt, upgrader, err := spdy.RoundTripperFor(&restclient.Config{})
		if err != nil {
			t.Fatal(err)
		}
		dialer := spdy.NewDialer(upgrader, &http.Client{Transport: rt}, "POST", u)
		stop, ready := make(chan struct{}), make(chan struct{})
		fw, err := portforward.New(dialer, []string{"0:8080"}, stop, ready, io.Discard, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		errc := make(chan error, 1)
		go func() { errc <- fw.ForwardPorts() }()
		select {
		case <-ready:
		case err := <-errc:
			t.Fatalf("port-forward: %v", err)
		}
		defer close(stop)
		ports, _ := fw.GetPorts()
		for i := 0; i < 3; i++ { // several connections over one session
			resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/i", ports[0].Local))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != "inside\n" {
				t.Errorf("through port-forward: %q", b)
			}
		}
	})

	_, err := d.rs.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: "nope", Cmd: []string{"true"}, Stdout: true})
	wantCode(t, "exec in a missing container", err, 5 /* NotFound */)
	if _, err := d.rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatal(err)
	}
}

type countWriter struct {
	w io.Writer
	n int
}

func (c *countWriter) Write(p []byte) (int, error) {
	c.n += len(p)
	return c.w.Write(p)
}

// signalWriter closes seen once match has been written to it.
type signalWriter struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	match string
	seen  chan struct{}
}

func (w *signalWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	already := strings.Contains(w.buf.String(), w.match)
	w.buf.Write(p)
	if !already && strings.Contains(w.buf.String(), w.match) {
		close(w.seen)
	}
	return len(p), nil
}
