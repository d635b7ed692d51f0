package main

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestOutBufAckAndReplay(t *testing.T) {
	b := newOutBuf(8)
	r, w := io.Pipe()
	go b.fill(r)
	go func() { w.Write([]byte("0123456789abcdef")); w.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	tests := []struct {
		name     string
		off      uint64
		max      int
		want     string
		wantEOF  bool
		wantCode codes.Code
	}{
		{name: "first read", off: 0, max: 4, want: "0123"},
		{name: "reply lost: same offset again", off: 0, max: 4, want: "0123"},
		{name: "ack 4", off: 4, max: 100, want: "4567"},
		{name: "buffer refills after ack", off: 8, max: 100, want: "89abcdef"},
		{name: "acknowledged bytes are gone", off: 2, max: 4, wantCode: codes.OutOfRange},
		{name: "beyond end", off: 100, max: 4, wantCode: codes.OutOfRange},
		{name: "end of stream", off: 16, max: 4, wantEOF: true},
	}
	for _, tc := range tests {
		data, eof, err := b.read(ctx, tc.off, tc.max)
		if tc.wantCode != codes.OK {
			if status.Code(err) != tc.wantCode {
				t.Errorf("%s: err %v, want %v", tc.name, err, tc.wantCode)
			}
			continue
		}
		if err != nil || eof != tc.wantEOF || !bytes.HasPrefix([]byte(tc.want), data) || len(data) == 0 && !eof {
			t.Errorf("%s: read(%d) = %q, %v, %v; want %q eof %v", tc.name, tc.off, data, eof, err, tc.want, tc.wantEOF)
		}
	}
}

func TestOutBufBackpressure(t *testing.T) {
	b := newOutBuf(4)
	r, w := io.Pipe()
	go b.fill(r)
	wrote := make(chan struct{})
	go func() { w.Write([]byte("abcdefgh")); close(wrote) }()
	select {
	case <-wrote:
		t.Fatal("writer finished although nothing was acknowledged past the limit")
	case <-time.After(100 * time.Millisecond):
	}
	ctx := context.Background()
	data, _, _ := b.read(ctx, 0, 10)
	b.read(ctx, uint64(len(data)), 10) // acknowledge
	select {
	case <-wrote:
	case <-time.After(2 * time.Second):
		t.Fatal("writer still blocked after acknowledgement")
	}
}

func TestOutBufReadHonoursContext(t *testing.T) {
	b := newOutBuf(4)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, _, err := b.read(ctx, 0, 4); err == nil {
		t.Fatal("read on an empty open stream returned without data")
	}
}

func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, path string
		ok         bool
	}{
		{"sh", "/nonexistent:" + "/bin", true},
		{"/abs/path", "", true},
		{"sh", dir, false},
	}
	for _, tc := range tests {
		_, err := lookPath(tc.name, tc.path)
		if (err == nil) != tc.ok {
			t.Errorf("lookPath(%q, %q) err = %v", tc.name, tc.path, err)
		}
	}
}
