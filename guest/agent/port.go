package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
)

// portListener turns a virtio-serial port into a net.Listener for ttrpc. A
// port carries one session at a time: Accept waits until the previous
// connection is closed, then until the host end is connected, then for the
// host's handshake. When the host disconnects, reads return EOF, ttrpc closes
// the connection, and the next Accept serves the host's next connection (a
// restarted hyperlet talking to a running VM).
type portListener struct {
	name string
	done chan struct{} // closed when the current connection is closed
	// next is the nonce of a hello that ended the previous session in-band:
	// the host is already waiting for its answer.
	next *agentapi.Nonce
}

func newPortListener(name string) *portListener {
	done := make(chan struct{})
	close(done)
	return &portListener{name: name, done: done}
}

func (l *portListener) Accept() (net.Conn, error) {
	<-l.done
	for {
		c, err := l.accept()
		if err == nil {
			l.done = make(chan struct{})
			return &portConn{File: c, l: l, fr: agentapi.FrameReader{R: c}, done: l.done}, nil
		}
		klog.V(2).InfoS("agent port: no session yet", "port", l.name, "err", err)
		time.Sleep(20 * time.Millisecond)
	}
}

func (l *portListener) accept() (*os.File, error) {
	dev, err := findPort(l.name)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	var n agentapi.Nonce
	if l.next != nil {
		n, l.next = *l.next, nil
	} else {
		n, err = nextHello(f)
	}
	if err == nil {
		err = agentapi.WriteReady(f, n)
	}
	if err != nil {
		f.Close() // closing discards whatever the old session left unread
		return nil, err
	}
	klog.V(1).InfoS("agent port: host connected", "port", l.name)
	return f, nil
}

// waitHostConnected polls until the host end of the port is open: until then
// the port reports POLLHUP and reads return EOF.
func waitHostConnected(f *os.File) error {
	raw, err := f.SyscallConn()
	if err != nil {
		return err
	}
	for {
		var revents int16
		var perr error
		raw.Control(func(fd uintptr) {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			_, perr = unix.Poll(fds, 0)
			revents = fds[0].Revents
		})
		if perr != nil && perr != unix.EINTR {
			return perr
		}
		if revents&unix.POLLHUP == 0 {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// findPort returns the /dev node of the virtio-serial port with this name.
func findPort(name string) (string, error) {
	ports, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
	for _, p := range ports {
		b, err := os.ReadFile(p)
		if err == nil && strings.TrimSpace(string(b)) == name {
			return filepath.Join("/dev", filepath.Base(filepath.Dir(p))), nil
		}
	}
	return "", fmt.Errorf("virtio-serial port %q not found", name)
}

func (l *portListener) Close() error   { return nil }
func (l *portListener) Addr() net.Addr { return portAddr(l.name) }

// portConn is one session. Reads unframe host data; a hello from the host
// ends the session (EOF for ttrpc) and is answered by the next Accept.
type portConn struct {
	*os.File
	l    *portListener
	fr   agentapi.FrameReader
	done chan struct{}
}

func (c *portConn) Read(p []byte) (int, error) {
	n, err := c.fr.Read(p)
	var ns *agentapi.NewSessionError
	switch {
	case errors.As(err, &ns):
		klog.V(1).InfoS("agent port: host started a new session")
		c.l.next = &ns.Nonce
		return n, io.EOF
	case isEOF(err):
		// The host went away. Keep the port open (closing it would discard
		// input, possibly the next hello) until the host is back and says
		// hello; then end this session.
		klog.V(1).InfoS("agent port: host disconnected")
		h, herr := nextHello(c.File)
		if herr != nil {
			return n, herr
		}
		c.l.next = &h
		return n, io.EOF
	}
	return n, err
}

// nextHello waits for the host to be connected and to start a session,
// skipping stale input. It keeps waiting across host disconnects.
func nextHello(f *os.File) (agentapi.Nonce, error) {
	for {
		if err := waitHostConnected(f); err != nil {
			return agentapi.Nonce{}, err
		}
		n, err := agentapi.ReadHello(f)
		if !isEOF(err) {
			return n, err
		}
	}
}

func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

func (c *portConn) Close() error {
	err := c.File.Close()
	select {
	case <-c.done:
	default:
		close(c.done)
	}
	return err
}

func (c *portConn) LocalAddr() net.Addr  { return portAddr(c.Name()) }
func (c *portConn) RemoteAddr() net.Addr { return portAddr("host") }

type portAddr string

func (a portAddr) Network() string { return "virtio-serial" }
func (a portAddr) String() string  { return string(a) }
