package agent

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func TestReadReadySkipsStaleBytes(t *testing.T) {
	n, _ := NewNonce()
	old, _ := NewNonce()
	tests := []struct {
		name  string
		stale []byte
	}{
		{name: "clean"},
		{name: "partial ttrpc frame", stale: []byte{0, 0, 0, 9, 0, 0, 0, 1, 2}},
		{name: "answer to an older hello", stale: append(append([]byte{}, readyMagic...), old[:]...)},
		{name: "truncated magic", stale: readyMagic[:5]},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			buf.Write(tc.stale)
			WriteReady(&buf, n)
			buf.WriteString("next")
			if err := ReadReady(&buf, n); err != nil {
				t.Fatalf("ReadReady: %v", err)
			}
			if rest := buf.String(); rest != "next" {
				t.Fatalf("handshake consumed bytes after the answer: left %q", rest)
			}
		})
	}
}

func TestFramesAndNewSession(t *testing.T) {
	n1, _ := NewNonce()
	n2, _ := NewNonce()
	var wire bytes.Buffer
	wire.WriteString("stale tail of an old session")
	WriteHello(&wire, n1)
	fw := &FrameWriter{W: &wire}
	// Data that looks like a hello must stay data.
	payload := append(append([]byte("x"), header(frameHello, nonceLen)...), n2[:]...)
	fw.Write(payload)
	WriteHello(&wire, n2)
	fw.Write([]byte("second session"))

	got, err := ReadHello(&wire)
	if err != nil || got != n1 {
		t.Fatalf("ReadHello = %x, %v", got, err)
	}
	fr := &FrameReader{R: &wire}
	data, err := io.ReadAll(io.LimitReader(fr, int64(len(payload))))
	if err != nil || !bytes.Equal(data, payload) {
		t.Fatalf("session 1 data = %q, %v", data, err)
	}
	var ns *NewSessionError
	if _, err := fr.Read(make([]byte, 10)); !errors.As(err, &ns) || ns.Nonce != n2 {
		t.Fatalf("read at new hello: %v, want NewSessionError", err)
	}
	fr = &FrameReader{R: &wire}
	data, _ = io.ReadAll(fr)
	if string(data) != "second session" {
		t.Fatalf("session 2 data = %q", data)
	}
}

func TestFrameReaderRejectsGarbage(t *testing.T) {
	fr := &FrameReader{R: bytes.NewReader([]byte("definitely not a frame"))}
	if _, err := fr.Read(make([]byte, 8)); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("err = %v, want ErrBadFrame", err)
	}
}
