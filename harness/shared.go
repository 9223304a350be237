package harness

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Environment variables read by Shared.
const (
	EnvPostgres = "THREEPC_TEST_POSTGRES"
	EnvMySQL    = "THREEPC_TEST_MYSQL"
)

const installHint = "install the servers with `apt-get install postgresql mariadb-server` (or run scripts/install-deps.sh), or set " +
	EnvPostgres + " / " + EnvMySQL + " to a loopback server URL"

type sharedServer struct {
	once sync.Once
	mu   sync.Mutex // serialises the revival of a killed server
	s    *Server
	err  error
}

var shared = map[Kind]*sharedServer{Postgres: {}, MariaDB: {}}

// Shared returns the server of kind shared by every test of this test
// binary, starting it on first use; Main closes it. Tests that kill or
// restart servers should Start their own instead; a shared server found
// dead is restarted.
//
// If the server cannot be had, Shared skips the test with the reason and
// how to install the servers, except under CI=true where a missing
// database is a failure.
func Shared(tb TB, kind Kind) *Server {
	tb.Helper()
	e, ok := shared[kind]
	if !ok {
		tb.Fatalf("harness: unknown server kind %q", kind)
		return nil
	}
	e.once.Do(func() { e.s, e.err = startShared(kind) })
	if e.err != nil {
		reportUnavailable(tb, kind, e.err, os.Getenv("CI") == "true")
		return nil
	}
	if !e.s.Running() {
		e.mu.Lock()
		defer e.mu.Unlock()
		if !e.s.Running() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if err := e.s.Restart(ctx); err != nil {
				tb.Fatalf("harness: shared %s server died and does not restart: %v", kind, err)
				return nil
			}
		}
	}
	return e.s
}

// reportUnavailable ends a test that cannot have its server: a skip on a
// developer's machine without the servers, a failure under CI (where a
// skipped database test would pass silently) and for a wrong environment
// variable.
func reportUnavailable(tb TB, kind Kind, err error, ci bool) {
	tb.Helper()
	if ci || isConfigError(err) {
		tb.Fatalf("harness: no %s server: %v", kind, err)
		return
	}
	tb.Skipf("harness: no %s server: %v\n%s (under CI=true this fails instead)", kind, err, installHint)
}

func startShared(kind Kind) (*Server, error) {
	env := EnvPostgres
	if kind == MariaDB {
		env = EnvMySQL
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if raw := os.Getenv(env); raw != "" {
		s, err := openExternal(ctx, kind, raw)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", env, err)
		}
		return s, nil
	}
	return Start(ctx, kind, Options{})
}

// configError marks errors in the user's settings, which fail a test even
// outside CI: skipping would hide the mistake.
type configError struct{ error }

func (e configError) Unwrap() error { return e.error }

func isConfigError(err error) bool {
	var ce configError
	return errors.As(err, &ce)
}

// openExternal describes the server named by a URL and checks that it
// answers. Only loopback hosts are accepted: tests must never reach
// another machine.
func openExternal(ctx context.Context, kind Kind, raw string) (*Server, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, configError{fmt.Errorf("harness: bad URL: %w", err)}
	}
	s := &Server{kind: kind, external: true}
	defPort := 5432
	switch kind {
	case Postgres:
		if u.Scheme != "postgres" && u.Scheme != "postgresql" {
			return nil, configError{fmt.Errorf("harness: URL scheme %q, want postgres://", u.Scheme)}
		}
		s.user, s.defaultDB = "postgres", "postgres"
		s.query = u.RawQuery
	case MariaDB:
		if u.Scheme != "mysql" && u.Scheme != "mariadb" {
			return nil, configError{fmt.Errorf("harness: URL scheme %q, want mysql://", u.Scheme)}
		}
		s.user = "root"
		defPort = 3306
	default:
		return nil, fmt.Errorf("harness: unknown server kind %q", kind)
	}
	host := u.Hostname()
	if !isLoopback(host) {
		return nil, configError{fmt.Errorf("harness: host %q is not a loopback address; tests may only use 127.0.0.1, ::1 or localhost", host)}
	}
	s.host = host
	s.port = defPort
	if p := u.Port(); p != "" {
		if s.port, err = strconv.Atoi(p); err != nil {
			return nil, configError{fmt.Errorf("harness: bad port %q", p)}
		}
	}
	if u.User != nil {
		s.user = u.User.Username()
		s.password, _ = u.User.Password()
	}
	if db := strings.TrimPrefix(u.Path, "/"); db != "" {
		s.defaultDB = db
	}
	if err := s.ping(ctx); err != nil {
		return nil, fmt.Errorf("harness: external %s server %s: %w", kind, s.Addr(), err)
	}
	return s, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (s *Server) ping(ctx context.Context) error {
	db, err := sql.Open(s.driverName(), s.DSN(""))
	if err != nil {
		return err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return db.PingContext(ctx)
}

// Main runs the tests and then closes every server started by this test
// binary, whatever the tests' outcome. Use it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }
func Main(m Runner) int {
	defer closeAll()
	return m.Run()
}

func closeAll() {
	allMu.Lock()
	servers := make([]*Server, 0, len(allServers))
	for s := range allServers {
		servers = append(servers, s)
	}
	allMu.Unlock()
	for _, s := range servers {
		if err := s.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "harness: close %s server: %v\n", s.kind, err)
		}
	}
}

var dbCounter atomic.Uint64

// NewDatabase creates a database for one test and returns its name, made
// from the test's name and unique on the server. On an external server the
// database is dropped when the test ends.
func (s *Server) NewDatabase(tb TB) string {
	tb.Helper()
	name := databaseName(tb.Name())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.CreateDatabase(ctx, name); err != nil {
		tb.Fatalf("%v", err)
		return ""
	}
	if s.external {
		tb.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := s.dropDatabase(ctx, name); err != nil {
				tb.Logf("harness: drop database %s: %v", name, err)
			}
		})
	}
	return name
}

// databaseName turns a test name into a database name: lower case,
// [a-z0-9_] only, at most 63 bytes (PostgreSQL's limit; MySQL allows 64),
// with a counter and random suffix so that parallel tests and test
// binaries sharing an external server never collide.
func databaseName(testName string) string {
	var b strings.Builder
	b.WriteString("t_")
	under := true
	for _, r := range strings.ToLower(testName) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
			under = false
		} else if !under {
			b.WriteByte('_')
			under = true
		}
	}
	base := strings.TrimRight(b.String(), "_")
	var rnd [3]byte
	_, _ = rand.Read(rnd[:])
	suffix := fmt.Sprintf("_%d_%s", dbCounter.Add(1), hex.EncodeToString(rnd[:]))
	if max := 63 - len(suffix); len(base) > max {
		base = strings.TrimRight(base[:max], "_")
	}
	return base + suffix
}
