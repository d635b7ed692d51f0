package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
)

// outputLimit is how many unacknowledged bytes a stream may hold.
const outputLimit = 1 << 20

type exitStatus struct {
	// startedPID is the container process runc had started (its pid file),
	// 0 if runc never got that far; read before the file is cleaned up.
	startedPID int
	code       int32
	signal     uint32
	oom        bool
	at         time.Time
}

// procHooks adapt the table to processes run through runc: signals go to the
// container process named by pidFile rather than to runc, and at exit the
// container's cgroup tells whether it was OOM-killed.
type procHooks struct {
	pidFile string
	cgroup  string
	cleanup []string // files removed at exit
	// consoleSocket, for a tty process the OCI runtime starts, is where
	// the runtime sends the master of the container's pty (its
	// --console-socket). The agent then holds the master itself: no
	// runtime process relays the terminal, and window sizes reach it.
	consoleSocket string
	// exe, when set, is the file run instead of Args[0] (which stays the
	// process's name): the OCI runtime's sealed copy.
	exe string
}

// process is one process the host started.
type process struct {
	id  string
	pid int
	os  *os.Process
	tty *os.File // pty master, nil without a tty

	stdinMu  sync.Mutex
	stdin    io.WriteCloser // nil without stdin or once closed
	stdinOff uint64

	out [2]*outBuf // indexed by agentapi.Stream

	hooks *procHooks // nil for plain processes
	conn  net.Conn   // set for port connections (no OS process)

	exited chan struct{}
	status exitStatus // valid once exited is closed
}

// procTable is the agent's process table. As PID 1 the agent reaps every
// child itself (wait4(-1)), so the table's lock is held from fork to
// registration: an exit reaped before the process is registered is matched
// once the lock is released.
type procTable struct {
	mu    sync.Mutex
	byID  map[string]*process
	byPID map[int]*process
}

func newProcTable() *procTable {
	return &procTable{byID: map[string]*process{}, byPID: map[int]*process{}}
}

func (t *procTable) get(id string) (*process, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.byID[id]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "process %q not found", id)
	}
	return p, nil
}

// reap collects every child that exits, ours or orphans.
func (t *procTable) reap(sigch <-chan os.Signal) {
	for range sigch {
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if err == unix.EINTR {
				continue
			}
			if pid <= 0 || err != nil {
				break
			}
			t.exited(pid, ws)
		}
	}
}

func (t *procTable) exited(pid int, ws unix.WaitStatus) {
	t.mu.Lock()
	p, ok := t.byPID[pid]
	delete(t.byPID, pid)
	t.mu.Unlock()
	if !ok {
		klog.V(3).InfoS("reaped orphan", "pid", pid)
		return
	}
	st := exitStatus{at: time.Now()}
	switch {
	case ws.Signaled():
		st.signal = uint32(ws.Signal())
		st.code = 128 + int32(ws.Signal())
	default:
		st.code = int32(ws.ExitStatus())
		if p.hooks != nil && st.code > 128 && st.code < 128+65 {
			// runc reports its container's death by signal N as 128+N.
			st.signal = uint32(st.code - 128)
		}
	}
	if h := p.hooks; h != nil {
		if h.cgroup != "" {
			st.oom = oomKilled(h.cgroup)
		}
		if h.pidFile != "" {
			st.startedPID, _ = readPID(h.pidFile)
		}
		for _, f := range h.cleanup {
			os.Remove(f)
		}
	}
	p.status = st
	close(p.exited)
	klog.V(1).InfoS("process exited", "id", p.id, "pid", pid, "code", st.code)
}

// start starts the process a request describes.
func (t *procTable) start(req *agentapi.StartProcessRequest, hooks *procHooks) (*process, error) {
	if req.Id == "" || len(req.Args) == 0 {
		return nil, status.Error(codes.InvalidArgument, "process id and args are required")
	}
	env := req.Env
	if envValue(env, "PATH") == "" {
		env = append(env, "PATH="+defaultPath)
	}
	path, err := lookPath(req.Args[0], envValue(env, "PATH"))
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "%s: %v", req.Args[0], err)
	}
	if hooks != nil && hooks.exe != "" {
		path = hooks.exe
	}
	cwd := req.Cwd
	if cwd == "" {
		cwd = "/"
	}
	cmd := &exec.Cmd{
		Path: path,
		Args: req.Args,
		Env:  env,
		Dir:  cwd,
		SysProcAttr: &syscall.SysProcAttr{
			Setsid: true,
			Credential: &syscall.Credential{
				Uid: req.Uid, Gid: req.Gid, Groups: req.AdditionalGids,
			},
		},
	}
	p := &process{id: req.Id, exited: make(chan struct{}), hooks: hooks}
	p.out[agentapi.Stream_STDOUT] = newOutBuf(outputLimit)
	p.out[agentapi.Stream_STDERR] = newOutBuf(outputLimit)

	var childEnds []*os.File // closed in the agent once the child has them
	defer func() {
		for _, f := range childEnds {
			f.Close()
		}
	}()
	var readers [2]io.Reader
	var console *net.UnixListener
	if req.Tty && hooks != nil && hooks.consoleSocket != "" {
		// The runtime's own stdio are pipes (its errors land in stderr);
		// the container's terminal comes over the socket once it starts.
		os.Remove(hooks.consoleSocket)
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: hooks.consoleSocket, Net: "unix"})
		if err != nil {
			return nil, status.Errorf(codes.Internal, "console socket: %v", err)
		}
		console = l
		defer func() {
			l.Close()
			os.Remove(hooks.consoleSocket)
		}()
	}
	if req.Tty && console == nil {
		master, slave, err := pty.Open()
		if err != nil {
			return nil, status.Errorf(codes.Internal, "open pty: %v", err)
		}
		childEnds = append(childEnds, slave)
		if req.Rows > 0 && req.Cols > 0 {
			pty.Setsize(master, &pty.Winsize{Rows: uint16(req.Rows), Cols: uint16(req.Cols)})
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		cmd.SysProcAttr.Setctty = true
		p.tty = master
		if req.Stdin {
			p.stdin = master
		}
		readers[agentapi.Stream_STDOUT] = master
	} else {
		if req.Stdin {
			r, w, err := os.Pipe()
			if err != nil {
				return nil, status.Errorf(codes.Internal, "stdin pipe: %v", err)
			}
			childEnds = append(childEnds, r)
			cmd.Stdin, p.stdin = r, w
		}
		for _, s := range []agentapi.Stream{agentapi.Stream_STDOUT, agentapi.Stream_STDERR} {
			r, w, err := os.Pipe()
			if err != nil {
				return nil, status.Errorf(codes.Internal, "output pipe: %v", err)
			}
			childEnds = append(childEnds, w)
			readers[s] = r
			if s == agentapi.Stream_STDOUT {
				cmd.Stdout = w
			} else {
				cmd.Stderr = w
			}
		}
	}

	t.mu.Lock()
	if _, dup := t.byID[req.Id]; dup {
		t.mu.Unlock()
		closeReaders(readers, p.stdin)
		return nil, status.Errorf(codes.AlreadyExists, "process %q already exists", req.Id)
	}
	err = cmd.Start()
	if err == nil {
		p.os, p.pid = cmd.Process, cmd.Process.Pid
		t.byID[p.id] = p
		t.byPID[p.pid] = p
	}
	t.mu.Unlock()
	if err != nil {
		closeReaders(readers, p.stdin)
		return nil, status.Errorf(codes.FailedPrecondition, "start %s: %v", req.Args[0], err)
	}
	if console != nil {
		// Until the master arrives, stdout carries the runtime's own
		// output; after, the container's terminal.
		// Without one (the runtime failed first), its output is the
		// process's, as for any other.
		if master, err := receiveConsole(console, p.exited); err != nil {
			klog.V(1).InfoS("no console from the runtime", "id", p.id, "err", err)
		} else {
			if req.Rows > 0 && req.Cols > 0 {
				pty.Setsize(master, &pty.Winsize{Rows: uint16(req.Rows), Cols: uint16(req.Cols)})
			}
			p.tty = master
			if req.Stdin {
				p.stdinMu.Lock()
				if p.stdin != nil {
					p.stdin.Close()
				}
				p.stdin = master
				p.stdinMu.Unlock()
			}
			// The runtime's stdout carries nothing more for the container.
			go io.Copy(io.Discard, readers[agentapi.Stream_STDOUT])
			readers[agentapi.Stream_STDOUT] = master
		}
	}
	for s, r := range readers {
		if r != nil {
			go p.out[s].fill(r)
		} else {
			p.out[s].close()
		}
	}
	klog.V(1).InfoS("process started", "id", p.id, "pid", p.pid, "args", req.Args)
	return p, nil
}

// receiveConsole accepts the OCI runtime's connection on its console
// socket and takes the pty master it sends, unless the runtime exits
// first or takes longer than a start may.
func receiveConsole(l *net.UnixListener, exited <-chan struct{}) (*os.File, error) {
	l.SetDeadline(time.Now().Add(startTimeout))
	type result struct {
		f   *os.File
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := l.AcceptUnix()
		if err != nil {
			got <- result{nil, err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(startTimeout))
		buf, oob := make([]byte, 4096), make([]byte, unix.CmsgSpace(4))
		_, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		if err != nil {
			got <- result{nil, err}
			return
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil || len(msgs) != 1 {
			got <- result{nil, fmt.Errorf("console message: %v (%d messages)", err, len(msgs))}
			return
		}
		fds, err := unix.ParseUnixRights(&msgs[0])
		if err != nil || len(fds) != 1 {
			got <- result{nil, fmt.Errorf("console fd: %v", err)}
			return
		}
		got <- result{os.NewFile(uintptr(fds[0]), "console"), nil}
	}()
	select {
	case r := <-got:
		return r.f, r.err
	case <-exited:
		l.Close()
		return nil, errors.New("the runtime exited before sending the console")
	}
}

func closeReaders(readers [2]io.Reader, stdin io.WriteCloser) {
	for _, r := range readers {
		if c, ok := r.(io.Closer); ok {
			c.Close()
		}
	}
	if stdin != nil {
		stdin.Close()
	}
}

// writeStdin writes data at stream offset off, skipping what was taken before.
func (p *process) writeStdin(off uint64, data []byte) (uint64, error) {
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	if p.stdin == nil {
		return p.stdinOff, status.Errorf(codes.FailedPrecondition, "process %q has no open stdin", p.id)
	}
	if off > p.stdinOff {
		return p.stdinOff, status.Errorf(codes.OutOfRange, "stdin write at %d, agent has %d", off, p.stdinOff)
	}
	skip := p.stdinOff - off
	if skip >= uint64(len(data)) {
		return p.stdinOff, nil
	}
	n, err := p.stdin.Write(data[skip:])
	p.stdinOff += uint64(n)
	if err != nil {
		return p.stdinOff, status.Errorf(codes.Aborted, "write stdin: %v", err)
	}
	return p.stdinOff, nil
}

func (p *process) closeStdin() error {
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	if p.stdin == nil {
		return nil
	}
	if p.tty != nil {
		// A terminal has no end of input: send the EOF character, as a user
		// typing ^D would, and keep the master for output.
		_, err := p.tty.Write([]byte{4})
		p.stdin = nil
		return err
	}
	err := p.stdin.Close()
	p.stdin = nil
	return err
}

// signal signals the process, or for runc-run processes the container
// process runc started.
func (p *process) signal(sig unix.Signal) error {
	select {
	case <-p.exited:
		return nil
	default:
	}
	if p.hooks != nil && p.hooks.pidFile != "" {
		if pid, err := readPID(p.hooks.pidFile); err == nil {
			if err := unix.Kill(pid, sig); err != nil && err != unix.ESRCH {
				return err
			}
			return nil
		}
	}
	if p.conn != nil {
		return p.conn.Close()
	}
	if err := p.os.Signal(sig); err != nil && err != os.ErrProcessDone {
		return err
	}
	return nil
}

func (p *process) release() {
	p.stdinMu.Lock()
	if p.stdin != nil && (p.tty == nil || p.stdin != io.WriteCloser(p.tty)) {
		p.stdin.Close()
	}
	p.stdin = nil
	p.stdinMu.Unlock()
	if p.tty != nil {
		p.tty.Close()
	}
	if p.os != nil {
		p.os.Release()
	}
}

func envValue(env []string, key string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(env[i], key+"="); ok {
			return v
		}
	}
	return ""
}

// lookPath resolves a command name against the process's PATH, not the agent's.
func lookPath(name, path string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			continue
		}
		f := filepath.Join(dir, name)
		if st, err := os.Stat(f); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return f, nil
		}
	}
	return "", fmt.Errorf("executable file not found in PATH %q", path)
}
