package agent

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// FuzzFrameReader reads arbitrary bytes as the agent channel's framing, as
// a hostile guest or host side could send them: no panic, no more payload
// than input, and a bad header is reported as such.
func FuzzFrameReader(f *testing.F) {
	var good bytes.Buffer
	fw := &FrameWriter{W: &good}
	fw.Write([]byte("hello"))
	f.Add(good.Bytes())
	var hello bytes.Buffer
	n, _ := NewNonce()
	WriteHello(&hello, n)
	f.Add(append(good.Bytes(), hello.Bytes()...))
	f.Add([]byte("garbage"))
	f.Add(header(frameData, MaxFrame))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := &FrameReader{R: bytes.NewReader(data)}
		buf := make([]byte, 7)
		total := 0
		for i := 0; i < len(data)+2; i++ {
			n, err := r.Read(buf)
			total += n
			if err != nil {
				var ns *NewSessionError
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, ErrBadFrame) && !errors.As(err, &ns) {
					t.Fatalf("unexpected error %v", err)
				}
				break
			}
		}
		if total > len(data) {
			t.Fatalf("read %d payload bytes from %d input bytes", total, len(data))
		}
		ReadHello(bytes.NewReader(data))
	})
}
