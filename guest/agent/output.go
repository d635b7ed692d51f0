package main

import (
	"context"
	"io"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// outBuf holds one output stream of a process between the process and the
// host. Bytes stay until the host acknowledges them by asking for a later
// offset, so a reply lost with a host connection is sent again. When limit
// bytes are unacknowledged, fill stops reading and the process blocks on a
// full pipe: backpressure instead of loss.
type outBuf struct {
	limit int

	mu      sync.Mutex
	base    uint64 // stream offset of data[0]
	data    []byte
	eof     bool
	changed chan struct{} // closed and replaced on every change
}

func newOutBuf(limit int) *outBuf {
	return &outBuf{limit: limit, changed: make(chan struct{})}
}

func (b *outBuf) notifyLocked() {
	close(b.changed)
	b.changed = make(chan struct{})
}

// fill copies r into the buffer until r ends. A read error other than EOF
// (EIO on a pty master whose slave is gone) also ends the stream.
func (b *outBuf) fill(r io.Reader) {
	tmp := make([]byte, 64<<10)
	for {
		b.mu.Lock()
		for len(b.data) >= b.limit {
			ch := b.changed
			b.mu.Unlock()
			<-ch
			b.mu.Lock()
		}
		room := min(b.limit-len(b.data), len(tmp))
		b.mu.Unlock()

		n, err := r.Read(tmp[:room])

		b.mu.Lock()
		if n > 0 {
			b.data = append(b.data, tmp[:n]...)
		}
		if err != nil {
			b.eof = true
		}
		b.notifyLocked()
		b.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// close marks the stream ended (a stream that never had a writer).
func (b *outBuf) close() {
	b.mu.Lock()
	b.eof = true
	b.notifyLocked()
	b.mu.Unlock()
}

// resumeOffset asks read for the oldest unacknowledged byte.
const resumeOffset = ^uint64(0)

// read returns up to max bytes from stream offset off, waiting for data.
// eof is true once the stream ended and everything before off was read.
func (b *outBuf) read(ctx context.Context, off uint64, max int) (data []byte, eof bool, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if off == resumeOffset {
		off = b.base
	}
	if off < b.base {
		return nil, false, status.Errorf(codes.OutOfRange, "read at %d: buffer starts at %d", off, b.base)
	}
	if end := b.base + uint64(len(b.data)); off > end {
		return nil, false, status.Errorf(codes.OutOfRange, "read at %d: beyond end %d", off, end)
	}
	if n := off - b.base; n > 0 {
		b.data = b.data[n:]
		b.base = off
		b.notifyLocked() // room for fill
	}
	for len(b.data) == 0 && !b.eof {
		ch := b.changed
		b.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			b.mu.Lock()
			return nil, false, ctx.Err()
		}
		b.mu.Lock()
	}
	if len(b.data) == 0 {
		return nil, true, nil
	}
	n := min(len(b.data), max)
	return append([]byte(nil), b.data[:n]...), false, nil
}

// peek returns up to max unacknowledged bytes without consuming them.
func (b *outBuf) peek(max int) []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]byte(nil), b.data[:min(len(b.data), max)]...)
}

// base returns the stream offset of the oldest unacknowledged byte.
func (b *outBuf) start() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.base
}
