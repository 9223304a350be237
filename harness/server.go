package harness

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// readyTimeout bounds how long Start and Restart wait for a server to
// accept connections; crash recovery of a small test cluster takes well
// under a second, so hitting it means the server is broken.
const readyTimeout = 30 * time.Second

// Server is a database server started by Start (or an external one named by
// an environment variable, see Shared). Its methods are safe for
// concurrent use.
type Server struct {
	kind     Kind
	opts     Options
	external bool

	host string
	port int
	// user and password authenticate the admin user; query holds extra
	// URL parameters of an external PostgreSQL URL (sslmode etc.).
	user, password string
	query          string
	defaultDB      string // used when DSN or URL get ""

	dir     string // temporary directory holding everything below
	dataDir string
	logPath string
	cred    *syscall.Credential // nil: run as the current user
	bin     binaries

	logMu  sync.Mutex // guards opts.Log, which Close clears
	mu     sync.Mutex
	proc   *process // nil when not running
	closed bool
	// unreserve gives up the reservation of port (see reservePort); nil
	// when there is none.
	unreserve func()
}

// process is one running server process.
type process struct {
	pid    int
	exited chan struct{} // closed once the process has been reaped
	err    error         // Wait's result, valid after exited is closed
}

func (p *process) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// binaries are the absolute paths of the programs a kind needs.
type binaries struct {
	initdb, server string
}

var (
	allMu      sync.Mutex
	allServers = map[*Server]struct{}{}
)

// Start creates a fresh data directory for kind in a new temporary
// directory, starts the server on a free port of 127.0.0.1 (or
// Options.Host) below the ephemeral range and waits until it accepts connections and proves to be
// the server just started (by its data directory). When the port turns
// out to be taken, Start tries a few others. The caller must Close the
// server.
func Start(ctx context.Context, kind Kind, opts Options) (*Server, error) {
	return startWith(ctx, kind, opts, pickPort)
}

func startWith(ctx context.Context, kind Kind, opts Options, pick portPicker) (*Server, error) {
	if kind != Postgres && kind != MariaDB {
		return nil, fmt.Errorf("harness: unknown server kind %q", kind)
	}
	bin, err := findBinaries(kind)
	if err != nil {
		return nil, err
	}
	cred, err := serverCredential(kind)
	if err != nil {
		return nil, err
	}
	host, err := listenHost(opts)
	if err != nil {
		return nil, err
	}
	if opts.Dir == "" {
		opts.Dir = defaultParent()
	}
	removeStaleDirs(opts.Dir)
	dir, err := os.MkdirTemp(opts.Dir, "threepc-harness-"+string(kind)+"-")
	if err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	s := &Server{
		kind:    kind,
		opts:    opts,
		host:    host,
		dir:     dir,
		dataDir: filepath.Join(dir, "data"),
		logPath: filepath.Join(dir, "server.log"),
		cred:    cred,
		bin:     bin,
	}
	if kind == Postgres {
		s.user, s.defaultDB = "postgres", "postgres"
	} else {
		s.user = "root"
	}
	// The owner file lets a later test binary remove this directory if
	// this one dies without running Close.
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("harness: %w", err)
	}
	if cred != nil {
		// The directory is created 0700 by MkdirTemp; the server user
		// must own it to create the data and socket files, and reach it.
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("harness: chown %s: %w", dir, err)
		}
		if err := makeSearchable(filepath.Dir(dir), cred.Uid); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	allMu.Lock()
	allServers[s] = struct{}{}
	allMu.Unlock()

	t0 := time.Now()
	fromTemplate, err := s.prepareData(ctx)
	if err != nil {
		s.Close()
		return nil, err
	}
	t1 := time.Now()
	// The port is found free by binding and closing, so a program that
	// binds ports by number can take it before the server binds, or
	// already listen on it in a way the check misses; then the server
	// fails to bind or another server answers, and a fresh port is tried.
	for attempt := 1; ; attempt++ {
		if err := s.takePort(pick); err != nil {
			s.Close()
			return nil, err
		}
		err = s.start(ctx)
		if err == nil {
			break
		}
		if attempt < maxPortAttempts && isPortConflict(err) {
			s.logf("harness: %s: port %d taken (attempt %d), trying another: %v", kind, s.port, attempt, firstLine(err))
			continue
		}
		if !fromTemplate {
			s.Close()
			return nil, err
		}
		// A template that copies cleanly but does not start is damaged
		// in a way the manifest misses: replace it and start afresh.
		s.logf("harness: %s from template failed, making a fresh data directory: %v", kind, err)
		fromTemplate = false
		os.RemoveAll(s.templateDir())
		os.RemoveAll(s.dataDir)
		if _, err := s.prepareData(ctx); err != nil {
			s.Close()
			return nil, err
		}
	}
	how := "init"
	if fromTemplate {
		how = "copy of template"
	}
	s.logf("harness: %s started on %s in %v (%s %v), dir %s", kind, s.Addr(),
		time.Since(t0).Round(time.Millisecond), how, t1.Sub(t0).Round(time.Millisecond), dir)
	return s, nil
}

// listenHost returns the address a server of opts listens on, checking
// that it is loopback unless the server runs in a network namespace.
func listenHost(opts Options) (string, error) {
	if opts.Host == "" {
		return "127.0.0.1", nil
	}
	ip := net.ParseIP(opts.Host)
	switch {
	case ip == nil:
		return "", fmt.Errorf("harness: Options.Host %q is not an IP address", opts.Host)
	case !ip.IsLoopback() && opts.NetNS == "":
		return "", fmt.Errorf("harness: Options.Host %s is not a loopback address; other addresses need Options.NetNS (an address inside a network namespace the test made)", opts.Host)
	}
	if opts.NetNS != "" {
		if _, err := os.Stat(netNSPath(opts.NetNS)); err != nil {
			return "", fmt.Errorf("harness: network namespace: %w", err)
		}
	}
	return ip.String(), nil
}

// netNSPath is the file of a network namespace given by name or path.
func netNSPath(ns string) string {
	if strings.ContainsRune(ns, '/') {
		return ns
	}
	return filepath.Join("/var/run/netns", ns)
}

// Kind reports the server kind.
func (s *Server) Kind() Kind { return s.kind }

// Addr is the server's "host:port".
func (s *Server) Addr() string { return net.JoinHostPort(s.host, strconv.Itoa(s.port)) }

// External reports whether the server was named by an environment variable
// instead of started by the harness.
func (s *Server) External() bool { return s.external }

// Running reports whether the server process is alive. External servers are
// always reported as running.
func (s *Server) Running() bool {
	if s.external {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc != nil && s.proc.alive()
}

// Kill sends SIGKILL to the server and, for PostgreSQL, to every backend,
// as a power cut would, and waits until they are gone and the port is free.
func (s *Server) Kill() error {
	if s.external {
		return ErrExternal
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.killLocked()
}

func (s *Server) killLocked() error {
	p := s.proc
	if p == nil {
		return nil
	}
	s.proc = nil
	if !p.alive() {
		return nil
	}
	// A stopped postmaster cannot fork, so the child list cannot grow
	// between reading it and killing; backends call setsid() and are not
	// in the postmaster's process group.
	_ = syscall.Kill(p.pid, syscall.SIGSTOP)
	children := childPIDs(p.pid)
	for _, c := range children {
		_ = syscall.Kill(c, syscall.SIGKILL)
	}
	_ = syscall.Kill(-p.pid, syscall.SIGKILL)
	_ = syscall.Kill(p.pid, syscall.SIGKILL)
	deadline := time.After(10 * time.Second)
	select {
	case <-p.exited:
	case <-deadline:
		return fmt.Errorf("harness: %s pid %d survived SIGKILL", s.kind, p.pid)
	}
	for _, c := range children {
		for pidAlive(c) {
			select {
			case <-deadline:
				return fmt.Errorf("harness: %s child pid %d survived SIGKILL", s.kind, c)
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	s.logf("harness: %s on %s killed", s.kind, s.Addr())
	return nil
}

// Stop shuts the server down cleanly (PostgreSQL fast shutdown, MariaDB
// SIGTERM) and waits for it to exit. If ctx ends first the server is
// killed and ctx's error returned.
func (s *Server) Stop(ctx context.Context) error {
	if s.external {
		return ErrExternal
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopLocked(ctx)
}

func (s *Server) stopLocked(ctx context.Context) error {
	p := s.proc
	if p == nil || !p.alive() {
		s.proc = nil
		return nil
	}
	sig := syscall.SIGTERM
	if s.kind == Postgres {
		sig = syscall.SIGINT // fast shutdown: abort sessions, checkpoint
	}
	if err := syscall.Kill(p.pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("harness: stop %s: %w", s.kind, err)
	}
	timeout := time.NewTimer(2 * time.Minute)
	defer timeout.Stop()
	select {
	case <-p.exited:
		s.proc = nil
		s.logf("harness: %s on %s stopped", s.kind, s.Addr())
		return nil
	case <-ctx.Done():
		_ = s.killLocked()
		return fmt.Errorf("harness: stop %s: %w", s.kind, ctx.Err())
	case <-timeout.C:
		_ = s.killLocked()
		return fmt.Errorf("harness: stop %s: no exit after 2m, killed\n%s", s.kind, s.logTail())
	}
}

// Restart starts the server again on the same data directory and port,
// stopping it first if it runs, and waits until it accepts connections.
// It fails if another server has taken the port meanwhile.
// After Kill this makes PostgreSQL and InnoDB run crash recovery, which
// keeps committed and prepared transactions.
func (s *Server) Restart(ctx context.Context) error {
	if s.external {
		return ErrExternal
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return errors.New("harness: restart of a closed server")
	}
	if err := s.Stop(ctx); err != nil {
		return err
	}
	t0 := time.Now()
	if err := s.start(ctx); err != nil {
		return err
	}
	s.logf("harness: %s restarted on %s in %v", s.kind, s.Addr(), time.Since(t0).Round(time.Millisecond))
	return nil
}

// Close kills the server and removes its directory. It is idempotent; an
// external server is left alone.
func (s *Server) Close() error {
	if s.external {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	// Close often runs after the test that set Log has ended, when
	// t.Logf would panic.
	s.logMu.Lock()
	s.opts.Log = nil
	s.logMu.Unlock()
	allMu.Lock()
	delete(allServers, s)
	allMu.Unlock()
	err := s.killLocked()
	if err == nil && s.kind == Postgres {
		removeSysVSegment(s.dataDir)
	}
	if s.unreserve != nil {
		s.unreserve()
		s.unreserve = nil
	}
	if rerr := os.RemoveAll(s.dir); rerr != nil && err == nil {
		err = fmt.Errorf("harness: %w", rerr)
	}
	return err
}

// LogPath is the file that receives the server's output; it is removed by
// Close.
func (s *Server) LogPath() string { return s.logPath }

// start launches the server process on s.port and waits until it is ready.
func (s *Server) start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("harness: start of a closed server")
	}
	if s.proc != nil && s.proc.alive() {
		return errors.New("harness: server already running")
	}
	var args []string
	switch s.kind {
	case Postgres:
		args = s.postgresArgs()
	case MariaDB:
		args = s.mariadbArgs()
	}
	if err := s.writeNetHBA(); err != nil {
		return err
	}
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("harness: %w", err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "\n=== harness: starting %s on port %d at %s\n", s.kind, s.port, time.Now().Format(time.RFC3339Nano))
	logStart, _ := logf.Seek(0, 1)
	cmd := exec.Command(s.bin.server, args...)
	cmd.Dir = s.dir
	cmd.Env = s.childEnv()
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = s.sysProcAttr()
	p, err := spawn(cmd, s.opts.NetNS)
	if err != nil {
		return fmt.Errorf("harness: start %s: %w", s.bin.server, err)
	}
	s.proc = p
	if err := s.waitReady(ctx, p); err != nil {
		_ = s.killLocked()
		tail := s.logTail()
		if !errors.Is(err, errForeignServer) && isBindError(s.logSince(logStart)) {
			err = fmt.Errorf("%w: %w", errPortInUse, err)
		}
		return fmt.Errorf("harness: %s on %s not ready: %w\n--- server log tail:\n%s", s.kind, s.Addr(), err, tail)
	}
	return nil
}

// spawn starts cmd from a goroutine locked to its OS thread that stays
// alive until the child exits: Linux sends Pdeathsig when the creating
// thread ends, not the process, and Go may end idle threads. With netns
// the thread first enters that network namespace, which the child
// inherits; the thread is never unlocked, so it ends with the goroutine
// instead of running other goroutines inside the namespace (and the Go
// runtime creates no threads from a locked one).
func spawn(cmd *exec.Cmd, netns string) (*process, error) {
	started := make(chan error, 1)
	p := &process{exited: make(chan struct{})}
	go func() {
		runtime.LockOSThread()
		if netns == "" {
			defer runtime.UnlockOSThread()
		} else if err := enterNetNS(netns); err != nil {
			started <- err
			return
		}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		p.pid = cmd.Process.Pid
		started <- nil
		p.err = cmd.Wait()
		close(p.exited)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

// waitReady pings the server until it answers, the process exits, ctx
// ends or readyTimeout passes. A server that answers must be ours: one
// that another program started on the port (ours failing to bind) has
// another data directory, and waitReady then fails with errForeignServer
// at once.
func (s *Server) waitReady(ctx context.Context, p *process) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	db, err := sql.Open(s.driverName(), s.DSN(""))
	if err != nil {
		return err
	}
	defer db.Close()
	var last error
	remoteRoot := s.kind != MariaDB || s.opts.NetNS == "" // done, or not needed
	for {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		if !remoteRoot {
			// Until then every connection from outside the namespace is
			// refused; the socket answers once the server is up.
			if last = s.allowRemoteRoot(pctx); last == nil {
				remoteRoot = true
			}
		}
		if remoteRoot {
			last = s.checkIdentity(pctx, db)
		}
		pcancel()
		if last == nil || errors.Is(last, errForeignServer) {
			return last
		}
		select {
		case <-p.exited:
			return fmt.Errorf("server exited (%v)", p.err)
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (s *Server) childEnv() []string {
	env := []string{
		"HOME=" + s.dir,
		"LC_ALL=C",
		"LANG=C",
		"TZ=UTC",
		"TMPDIR=" + s.dir,
	}
	if path := os.Getenv("PATH"); path != "" {
		env = append(env, "PATH="+path)
	} else {
		env = append(env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	return env
}

// runInit runs a data directory initialisation program as the server user
// and returns its output on failure.
func (s *Server) runInit(ctx context.Context, path string, args ...string) error {
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Dir = s.dir
	cmd.Env = s.childEnv()
	cmd.SysProcAttr = s.sysProcAttr()
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	_ = os.WriteFile(filepath.Join(s.dir, "init.log"), out.Bytes(), 0o644)
	if err != nil {
		return fmt.Errorf("harness: %s: %w\n%s", filepath.Base(path), err, tailLines(out.Bytes(), 30))
	}
	return nil
}

func (s *Server) logf(format string, args ...any) {
	s.logMu.Lock()
	log := s.opts.Log
	s.logMu.Unlock()
	if log != nil {
		log(format, args...)
	}
}

// logTail returns the last lines of the server log for error messages.
func (s *Server) logTail() string {
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	return tailLines(b, 30)
}

func (s *Server) logSince(off int64) string {
	b, err := os.ReadFile(s.logPath)
	if err != nil || off > int64(len(b)) {
		return ""
	}
	return string(b[off:])
}

func tailLines(b []byte, n int) string {
	b = bytes.TrimRight(b, "\n")
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == '\n' {
			n--
			if n == 0 {
				return string(b[i+1:])
			}
		}
	}
	return string(b)
}

var (
	errPortInUse     = errors.New("harness: port already in use")
	errForeignServer = errors.New("harness: another server answers on the port")
)

// isPortConflict reports whether a start failed because its port was not
// the server's to have, so that another port may work.
func isPortConflict(err error) bool {
	return errors.Is(err, errPortInUse) || errors.Is(err, errForeignServer)
}

// bindErrors are how the servers log a failed bind of their TCP port:
// PostgreSQL 'could not bind IPv4 address "127.0.0.1": Address already in
// use' then 'could not create any TCP/IP sockets', MariaDB "Can't start
// server: Bind on TCP/IP port. Got error: 98: Address already in use".
var bindErrors = []string{
	"Address already in use",
	"could not bind",
	"could not create any TCP/IP sockets",
	"Bind on TCP/IP port",
}

func isBindError(log string) bool {
	for _, e := range bindErrors {
		if strings.Contains(log, e) {
			return true
		}
	}
	return false
}

// takePort gives up the server's port, if any, and picks another.
func (s *Server) takePort(pick portPicker) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.unreserve != nil {
		s.unreserve()
		s.unreserve = nil
	}
	port, release, err := pick()
	if err != nil {
		return err
	}
	s.port, s.unreserve = port, release
	return nil
}

// checkIdentity asks the server on s's port for its data directory, which
// is unique to s (a fresh temporary directory), and fails with
// errForeignServer unless it is s.dataDir. Other errors mean not ready.
func (s *Server) checkIdentity(ctx context.Context, db *sql.DB) error {
	q := "SHOW data_directory"
	if s.kind == MariaDB {
		q = "SELECT @@datadir"
	}
	var got string
	if err := db.QueryRowContext(ctx, q).Scan(&got); err != nil {
		return err
	}
	if !samePath(got, s.dataDir) {
		return fmt.Errorf("%w: %s has data directory %s, ours is %s", errForeignServer, s.Addr(), got, s.dataDir)
	}
	return nil
}

// samePath compares a server's idea of a directory with ours: MariaDB
// reports it with a trailing slash and with symbolic links resolved.
func samePath(server, ours string) bool {
	server = filepath.Clean(server)
	if server == filepath.Clean(ours) {
		return true
	}
	real, err := filepath.EvalSymlinks(ours)
	return err == nil && server == real
}

func firstLine(err error) string {
	line, _, _ := strings.Cut(err.Error(), "\n")
	return line
}
