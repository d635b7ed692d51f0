package agent

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The agent channel is a virtio-serial port: a byte pipe that outlives the
// host's connection to it. When hyperlet reconnects (a restart, a dropped
// connection), bytes of the old session may still be in flight, and the guest
// may not even notice the host went away if it comes back fast. So:
//
//   - host -> guest, everything is framed: an 8-byte header (magic, type,
//     24-bit length) and a payload. A hello frame (carrying a random nonce)
//     starts a session. The guest sees a new hello in-band even when it missed
//     the disconnect, and ends the old session; ttrpc bytes inside data frames
//     can never be taken for a hello.
//   - guest -> host, the guest answers a hello with ReadyMagic + nonce and then
//     speaks plain ttrpc. The host discards everything before that answer.
//
// The host sends nothing after a hello until it has the answer, so the guest
// can close and reopen the port (discarding stale input) between sessions.

const (
	// Port is the name of the virtio-serial port that carries the agent API.
	Port = "io.hyperlet.agent.0"

	// APIRevision is bumped on incompatible changes to this protocol.
	APIRevision = 3

	nonceLen  = 16
	headerLen = 8
	// MaxFrame is the largest payload of one frame.
	MaxFrame = 1<<24 - 1

	frameData  = 0
	frameHello = 1
)

var (
	frameMagic = []byte("hlF\x01")
	readyMagic = []byte("HYPERLET-READY1:")
	// helloHeader is the full header of a hello frame, the pattern a guest
	// scans for when it resynchronises.
	helloHeader = header(frameHello, nonceLen)
)

func header(typ byte, n int) []byte {
	h := make([]byte, headerLen)
	copy(h, frameMagic)
	binary.BigEndian.PutUint32(h[4:], uint32(typ)<<24|uint32(n))
	return h
}

// Nonce identifies one session.
type Nonce [nonceLen]byte

// NewNonce returns a random nonce.
func NewNonce() (Nonce, error) {
	var n Nonce
	_, err := rand.Read(n[:])
	return n, err
}

// WriteHello starts a session (host side).
func WriteHello(w io.Writer, n Nonce) error {
	_, err := w.Write(append(header(frameHello, nonceLen), n[:]...))
	return err
}

// WriteReady answers hello n (guest side).
func WriteReady(w io.Writer, n Nonce) error {
	_, err := w.Write(append(append([]byte{}, readyMagic...), n[:]...))
	return err
}

// ReadReady discards input up to the answer to hello n (host side). It reads
// one byte at a time so that nothing after the answer is consumed.
func ReadReady(r io.Reader, n Nonce) error {
	_, err := scan(r, readyMagic, &n)
	return err
}

// ReadHello discards input up to a hello frame and returns its nonce (guest
// side, when no session is running).
func ReadHello(r io.Reader) (Nonce, error) {
	return scan(r, helloHeader, nil)
}

// maxGarbage bounds how much stale input a handshake skips.
const maxGarbage = 64 << 20

var errGarbage = errors.New("agent handshake: no handshake in stream")

func scan(r io.Reader, magic []byte, want *Nonce) (Nonce, error) {
	msgLen := len(magic) + nonceLen
	window := make([]byte, 0, 2*msgLen)
	var b [1]byte
	for skipped := 0; skipped < maxGarbage; skipped++ {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return Nonce{}, fmt.Errorf("agent handshake: %w", err)
		}
		window = append(window, b[0])
		if len(window) > msgLen {
			window = append(window[:0], window[len(window)-msgLen:]...)
		}
		if len(window) < msgLen || !bytes.Equal(window[:len(magic)], magic) {
			continue
		}
		var n Nonce
		copy(n[:], window[len(magic):])
		if want == nil || n == *want {
			return n, nil
		}
	}
	return Nonce{}, errGarbage
}

// FrameWriter frames host-to-guest data. Each Write is sent as whole frames
// with one write call per frame.
type FrameWriter struct {
	W   io.Writer
	buf []byte
}

func (f *FrameWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		n := min(len(p), MaxFrame)
		f.buf = append(append(f.buf[:0], header(frameData, n)...), p[:n]...)
		if _, err := f.W.Write(f.buf); err != nil {
			return written, err
		}
		written += n
		p = p[n:]
	}
	return written, nil
}

// NewSessionError is returned by FrameReader when the host started a new
// session: the current one is over.
type NewSessionError struct{ Nonce Nonce }

func (e *NewSessionError) Error() string { return "agent channel: host started a new session" }

// ErrBadFrame means the stream is out of sync.
var ErrBadFrame = errors.New("agent channel: bad frame header")

// FrameReader unframes host-to-guest data for one session.
type FrameReader struct {
	R    io.Reader
	left int // payload bytes left in the current data frame
}

func (f *FrameReader) Read(p []byte) (int, error) {
	for f.left == 0 {
		var h [headerLen]byte
		if _, err := io.ReadFull(f.R, h[:]); err != nil {
			return 0, err
		}
		if !bytes.Equal(h[:4], frameMagic) {
			return 0, ErrBadFrame
		}
		v := binary.BigEndian.Uint32(h[4:])
		typ, n := byte(v>>24), int(v&MaxFrame)
		switch typ {
		case frameData:
			f.left = n
		case frameHello:
			if n != nonceLen {
				return 0, ErrBadFrame
			}
			var e NewSessionError
			if _, err := io.ReadFull(f.R, e.Nonce[:]); err != nil {
				return 0, err
			}
			return 0, &e
		default:
			return 0, ErrBadFrame
		}
	}
	n, err := f.R.Read(p[:min(len(p), f.left)])
	f.left -= n
	return n, err
}
