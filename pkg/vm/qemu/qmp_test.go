package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// fakeQMP answers like QEMU: greeting, then one reply per command, with an
// event interleaved before each reply.
func fakeQMP(t *testing.T, replies map[string]string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qmp")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write([]byte(`{"QMP": {"version": {}, "capabilities": []}}` + "\n"))
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return
			}
			var req struct{ Execute string }
			json.Unmarshal(line, &req)
			c.Write([]byte(`{"event": "RESUME", "timestamp": {}}` + "\n"))
			reply, ok := replies[req.Execute]
			if !ok {
				reply = `{"error": {"class": "CommandNotFound", "desc": "no"}}`
			}
			c.Write([]byte(reply + "\n"))
		}
	}()
	return sock
}

func TestQMP(t *testing.T) {
	sock := fakeQMP(t, map[string]string{
		"qmp_capabilities": `{"return": {}}`,
		"query-status":     `{"return": {"status": "running", "running": true}}`,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	q, err := dialQMP(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer q.close()
	tests := []struct {
		cmd       string
		want      string
		wantClass string
	}{
		{cmd: "query-status", want: `{"status": "running", "running": true}`},
		{cmd: "device_add", wantClass: "CommandNotFound"},
	}
	for _, tc := range tests {
		ret, err := q.execute(ctx, tc.cmd, nil)
		var qe *QMPError
		switch {
		case tc.wantClass != "":
			if !errors.As(err, &qe) || qe.Class != tc.wantClass {
				t.Errorf("%s: err = %v, want class %s", tc.cmd, err, tc.wantClass)
			}
		case err != nil:
			t.Errorf("%s: %v", tc.cmd, err)
		case string(ret) != tc.want:
			t.Errorf("%s = %s, want %s", tc.cmd, ret, tc.want)
		}
	}
}
