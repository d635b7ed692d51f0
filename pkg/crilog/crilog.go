// Package crilog writes container output in the CRI log format kubelet
// reads back: one record per line,
//
//	<RFC3339Nano timestamp> <stream> <P|F> <content>
//
// where P marks a partial line (a long line split, to be joined with what
// follows) and F the end of a line. Both streams of a container share one
// file, which can be reopened after kubelet rotates it.
package crilog

import (
	"bytes"
	"fmt"
	"golang.org/x/sys/unix"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// MaxLine is the longest record content; longer lines are split into
// partial records (kubelet uses the same bound).
const MaxLine = 16 << 10

// File is a container's log file.
type File struct {
	path string

	mu  sync.Mutex
	f   *os.File
	now func() time.Time
}

// Open opens (appending) or creates the log file at path.
func Open(path string) (*File, error) {
	l := &File{path: path, now: time.Now}
	if err := l.Reopen(); err != nil {
		return nil, err
	}
	return l, nil
}

// Path is the file's path.
func (l *File) Path() string { return l.path }

// Reopen closes the file and opens path again: after kubelet renamed the
// file for rotation, output goes to a new file at the old name.
func (l *File) Reopen() error {
	if err := os.MkdirAll(filepath.Dir(l.path), 0o755); err != nil {
		return fmt.Errorf("create log directory: %w", err)
	}
	// Never through a symlink: the daemon is root.
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o640)
	if err != nil {
		return fmt.Errorf("open log %s: %w", l.path, err)
	}
	l.mu.Lock()
	old := l.f
	l.f = f
	l.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

// Close closes the file.
func (l *File) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

func (l *File) record(stream string, tag byte, content []byte) error {
	var b bytes.Buffer
	b.Grow(len(content) + 64)
	b.WriteString(l.now().UTC().Format(time.RFC3339Nano))
	b.WriteByte(' ')
	b.WriteString(stream)
	b.WriteByte(' ')
	b.WriteByte(tag)
	b.WriteByte(' ')
	b.Write(content)
	b.WriteByte('\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return os.ErrClosed
	}
	_, err := l.f.Write(b.Bytes())
	return err
}

// Stream returns a writer for one stream ("stdout" or "stderr"). Its Close
// writes out an unterminated last line.
func (l *File) Stream(name string) *Stream { return &Stream{l: l, name: name} }

// Stream splits one output stream into log records.
type Stream struct {
	l    *File
	name string
	buf  []byte
}

// Write logs every complete line in p and keeps the rest for later.
func (s *Stream) Write(p []byte) (int, error) {
	s.buf = append(s.buf, p...)
	for {
		i := bytes.IndexByte(s.buf, '\n')
		if i < 0 {
			break
		}
		line := s.buf[:i]
		for len(line) > MaxLine {
			if err := s.l.record(s.name, 'P', line[:MaxLine]); err != nil {
				return 0, err
			}
			line = line[MaxLine:]
		}
		if err := s.l.record(s.name, 'F', line); err != nil {
			return 0, err
		}
		s.buf = s.buf[i+1:]
	}
	for len(s.buf) >= MaxLine {
		if err := s.l.record(s.name, 'P', s.buf[:MaxLine]); err != nil {
			return 0, err
		}
		s.buf = s.buf[MaxLine:]
	}
	if len(s.buf) == 0 {
		s.buf = nil
	}
	return len(p), nil
}

// Close logs a last line that had no newline.
func (s *Stream) Close() error {
	if len(s.buf) == 0 {
		return nil
	}
	err := s.l.record(s.name, 'F', s.buf)
	s.buf = nil
	return err
}
