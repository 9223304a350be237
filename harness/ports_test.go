package harness

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// checkPortRange fails unless port is one the harness may give a server:
// below the kernel's ephemeral range (and 32768), outside the well-known
// service ports.
func checkPortRange(t *testing.T, port int) {
	t.Helper()
	if port < portLow || port >= portHigh || port >= 32768 || wellKnownPorts[port] {
		t.Errorf("port %d outside [%d, %d) or well known", port, portLow, portHigh)
	}
	if lo, _, ok := ephemeralRange(); ok && lo-portLow >= 1000 && port >= lo {
		t.Errorf("port %d is in the ephemeral range, which starts at %d", port, lo)
	}
}

// TestPickPort: picked ports are in the harness range, bindable, and
// reserved against other pickers until released.
func TestPickPort(t *testing.T) {
	seen := map[int]bool{}
	var releases []func()
	defer func() {
		for _, r := range releases {
			r()
		}
	}()
	for range 50 {
		p, release, err := pickPort()
		if err != nil {
			t.Fatal(err)
		}
		releases = append(releases, release)
		checkPortRange(t, p)
		if seen[p] {
			t.Fatalf("port %d picked twice while reserved", p)
		}
		seen[p] = true
		if _, ok := reservePort(p); ok {
			t.Fatalf("port %d reserved twice", p)
		}
		if err := canBind(p); err != nil {
			t.Fatalf("picked port %d does not bind: %v", p, err)
		}
	}
	p, release, err := pickPort()
	if err != nil {
		t.Fatal(err)
	}
	release()
	again, ok := reservePort(p)
	if !ok {
		t.Fatalf("port %d still reserved after release", p)
	}
	again()
}

func TestIsBindError(t *testing.T) {
	for _, log := range []string{
		`2026-01-01 00:00:00.000 UTC [7] LOG:  could not bind IPv4 address "127.0.0.1": Address already in use`,
		`2026-01-01 00:00:00.000 UTC [7] FATAL:  could not create any TCP/IP sockets`,
		`2026-01-01  0:00:00 0 [ERROR] Can't start server: Bind on TCP/IP port. Got error: 98: Address already in use`,
	} {
		if !isBindError(log) {
			t.Errorf("isBindError(%q) = false", log)
		}
	}
	if isBindError("LOG:  database system is ready to accept connections") {
		t.Error("isBindError of a ready message")
	}
}

// takenFirst is a portPicker that hands out port first and then real
// ports, counting its calls.
type takenFirst struct {
	mu    sync.Mutex
	port  int
	calls int
}

func (p *takenFirst) pick() (int, func(), error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls++
	if p.calls == 1 {
		return p.port, func() {}, nil
	}
	return pickPort()
}

func (p *takenFirst) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls
}

// startWithPicker is startOwn with a port picker.
func startWithPicker(t *testing.T, kind Kind, pick portPicker) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := startWith(ctx, kind, Options{Log: t.Logf}, pick)
	if err != nil {
		if errors.Is(err, ErrBinariesMissing) && os.Getenv("CI") != "true" {
			t.Skipf("%v", err)
		}
		t.Fatalf("Start(%s): %v", kind, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// checkOurs fails unless the server answering on s's port reports s's
// data directory.
func checkOurs(t *testing.T, s *Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db := open(t, s, "")
	if err := s.checkIdentity(ctx, db); err != nil {
		t.Fatalf("server on %s: %v", s.Addr(), err)
	}
	db.Close()
}

// listenOnPicked takes a picked port for a listener of the test's own.
// The port can be taken between the pick's bind check and this bind:
// where the kernel's ephemeral range covers the harness range (as
// "1024 65535" does), by any outgoing connection. Such a port is picked
// again, as Start does for its servers.
func listenOnPicked(t *testing.T) (int, net.Listener) {
	t.Helper()
	var last error
	for range maxPortAttempts {
		port, release, err := pickPort()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(release)
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err == nil {
			return port, l
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			t.Fatal(err)
		}
		last = err
		t.Logf("picked port %d was taken before the test bound it: %v", port, err)
	}
	t.Fatalf("no picked port could be bound in %d attempts: %v", maxPortAttempts, last)
	return 0, nil
}

// TestStartOnTakenPort: when another program listens on the port Start
// picked, the server fails to bind and Start succeeds on another port,
// below the ephemeral range, which stays reserved across Kill and
// Restart and is given up by Close.
func TestStartOnTakenPort(t *testing.T) {
	for _, kind := range []Kind{Postgres, MariaDB} {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			port, l := listenOnPicked(t)
			defer l.Close()
			go func() {
				// Hang up at once, as a server of another protocol
				// would, so that the readiness pings fail fast.
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					c.Close()
				}
			}()

			picker := &takenFirst{port: port}
			s := startWithPicker(t, kind, picker.pick)
			if s.port == port {
				t.Fatalf("server on the taken port %d", port)
			}
			if n := picker.count(); n < 2 {
				t.Fatalf("picker called %d times, want a second port", n)
			}
			checkPortRange(t, s.port)
			checkOurs(t, s)
			b, err := os.ReadFile(s.LogPath())
			if err != nil {
				t.Fatal(err)
			}
			if !isBindError(string(b)) {
				t.Errorf("server log shows no failed bind of port %d:\n%s", port, b)
			}

			// Killed, the server holds no socket; the reservation keeps
			// the port from other test binaries until it is back.
			if err := s.Kill(); err != nil {
				t.Fatal(err)
			}
			if _, ok := reservePort(s.port); ok {
				t.Fatalf("port %d of a killed server not reserved", s.port)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if err := s.Restart(ctx); err != nil {
				t.Fatal(err)
			}
			checkOurs(t, s)

			ours := s.port
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			again, ok := reservePort(ours)
			if !ok {
				t.Fatalf("port %d still reserved after Close", ours)
			}
			again()
		})
	}
}

// foreignServer is a running server of kind started by the harness: the
// shared one unless that is external (whose data directory is unknown).
func foreignServer(t *testing.T, kind Kind) *Server {
	t.Helper()
	if s := Shared(t, kind); !s.External() {
		return s
	}
	return startOwn(t, kind, Options{})
}

// TestStartBesideForeignServer: a server of the same kind, with the same
// trusting admin user, already listens on the port Start picked. Its
// pings succeed, but it is not ours: Start must not take it, and ends on
// another port with its own server.
func TestStartBesideForeignServer(t *testing.T) {
	for _, kind := range []Kind{Postgres, MariaDB} {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			foreign := foreignServer(t, kind)
			picker := &takenFirst{port: foreign.port}
			s := startWithPicker(t, kind, picker.pick)
			if s.port == foreign.port || s.dataDir == foreign.dataDir {
				t.Fatalf("Start took the foreign server on %s", foreign.Addr())
			}
			if n := picker.count(); n < 2 {
				t.Fatalf("picker called %d times, want a second port", n)
			}
			checkPortRange(t, s.port)
			checkOurs(t, s)
		})
	}
}

// TestWaitReadyRejectsForeignServer: waitReady pointed at a live server
// with another data directory fails at once with errForeignServer, while
// "our" process is still running, instead of taking it as ready.
func TestWaitReadyRejectsForeignServer(t *testing.T) {
	for _, kind := range []Kind{Postgres, MariaDB} {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			foreign := foreignServer(t, kind)
			s := &Server{
				kind:      kind,
				host:      foreign.host,
				port:      foreign.port,
				user:      foreign.user,
				defaultDB: foreign.defaultDB,
				dataDir:   filepath.Join(t.TempDir(), "data"),
			}
			running := &process{exited: make(chan struct{})} // never exits
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			t0 := time.Now()
			err := s.waitReady(ctx, running)
			if !errors.Is(err, errForeignServer) || !isPortConflict(err) {
				t.Fatalf("waitReady on %s = %v, want errForeignServer", foreign.Addr(), err)
			}
			if !strings.Contains(err.Error(), foreign.dataDir) {
				t.Errorf("error does not name the foreign data directory %s: %v", foreign.dataDir, err)
			}
			if d := time.Since(t0); d > 10*time.Second {
				t.Errorf("waitReady took %v to reject the foreign server", d)
			}

			// The same server under its own identity is ready.
			s.dataDir = foreign.dataDir
			if err := s.waitReady(ctx, running); err != nil {
				t.Fatalf("waitReady with the right data directory: %v", err)
			}
		})
	}
}

// TestSharedPortBelowEphemeral: the shared servers, which every test
// binary starts, listen below the ephemeral range.
func TestSharedPortBelowEphemeral(t *testing.T) {
	for _, kind := range []Kind{Postgres, MariaDB} {
		t.Run(string(kind), func(t *testing.T) {
			s := Shared(t, kind)
			if s.External() {
				t.Skip("external server: its port is the URL's")
			}
			checkPortRange(t, s.port)
			checkOurs(t, s)
		})
	}
}

func TestSamePath(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	if err := os.Mkdir(real, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		server, ours string
		want         bool
	}{
		{real, real, true},
		{real + "/", real, true}, // MariaDB's @@datadir
		{real, link, true},       // MariaDB resolves links
		{link, link, true},       // PostgreSQL keeps them
		{real, filepath.Join(dir, "other"), false},
		{dir, real, false},
	} {
		if got := samePath(tc.server, tc.ours); got != tc.want {
			t.Errorf("samePath(%q, %q) = %v, want %v", tc.server, tc.ours, got, tc.want)
		}
	}
}
