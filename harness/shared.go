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

// Environment variables read by Shared and Own. EnvMySQL may name a
// MySQL 8 server as well as a MariaDB one: kind MariaDB is the MySQL
// family.
const (
	EnvPostgres = "THREEPC_TEST_POSTGRES"
	EnvMySQL    = "THREEPC_TEST_MYSQL"
)

// external is the one place that decides where a test's server of kind
// comes from: the environment variable naming an external server, and its
// value ("" when the harness starts its own).
func external(kind Kind) (env, raw string) {
	env = EnvPostgres
	if kind == MariaDB {
		env = EnvMySQL
	}
	return env, os.Getenv(env)
}

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

// Own starts a server of kind for tb alone, closed when the test ends:
// for tests that kill, stop or restart their server, change its settings,
// or leave it in a state the shared one must not get (orphaned branches).
//
// When the environment names an external server of kind
// (THREEPC_TEST_POSTGRES, THREEPC_TEST_MYSQL), the suite is being run
// against that server, which the harness can neither kill nor restart,
// and which a throwaway server of another version would not stand in
// for: Own skips the test and says why. Without the server binaries it
// skips the test, or fails it under CI=true, as Shared does.
func Own(tb TB, kind Kind, opts Options) *Server {
	tb.Helper()
	if _, ok := shared[kind]; !ok {
		tb.Fatalf("harness: unknown server kind %q", kind)
		return nil
	}
	if env, raw := external(kind); raw != "" {
		tb.Skipf("harness: this test needs a %s server of its own (to kill, restart or configure it), and %s names an external server, which the harness cannot kill or restart: skipped; unset %s to run it on a throwaway server", kind, env, env)
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := Start(ctx, kind, opts)
	if err != nil {
		if errors.Is(err, ErrBinariesMissing) {
			reportUnavailable(tb, kind, err, os.Getenv("CI") == "true")
			return nil
		}
		tb.Fatalf("harness: start a %s server of the test's own: %v", kind, err)
		return nil
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Logf("harness: close %s server: %v", kind, err)
		}
	})
	return s
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
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if env, raw := external(kind); raw != "" {
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
