package harness

import (
	"context"
	"errors"
	"net"
	"os"
	"strconv"
	"sync"
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

// checkUp fails unless s answers.
func checkUp(t *testing.T, s *Server) {
	t.Helper()
	if err := s.ping(context.Background()); err != nil {
		t.Fatalf("server on %s: %v", s.Addr(), err)
	}
}

// TestStartOnTakenPort: when another program listens on the port Start
// picked, the server fails to bind and Start succeeds on another port,
// below the ephemeral range, which stays reserved across Kill and
// Restart and is given up by Close.
func TestStartOnTakenPort(t *testing.T) {
	for _, kind := range []Kind{Postgres, MariaDB} {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			port, release, err := pickPort()
			if err != nil {
				t.Fatal(err)
			}
			defer release()
			l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
			if err != nil {
				t.Fatal(err)
			}
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
			checkUp(t, s)
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
			checkUp(t, s)

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
			checkUp(t, s)
		})
	}
}
