package harness

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// startOwn starts a private server for a test that kills or reconfigures
// it, skipping (failing under CI) when the binaries are missing, and, as
// Own does, when the kind's environment variable names an external
// server.
func startOwn(t *testing.T, kind Kind, opts Options) *Server {
	t.Helper()
	if env, raw := external(kind); raw != "" {
		t.Skipf("harness: this test starts a %s server of its own, and %s names an external server: skipped; unset %s to run it", kind, env, env)
	}
	opts.Log = t.Logf
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	t0 := time.Now()
	s, err := Start(ctx, kind, opts)
	if err != nil {
		if errors.Is(err, ErrBinariesMissing) && os.Getenv("CI") != "true" {
			t.Skipf("%v", err)
		}
		t.Fatalf("Start(%s): %v", kind, err)
	}
	t.Logf("cold start of %s (init + start + ready): %v", kind, time.Since(t0))
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func open(t *testing.T, s *Server, database string) *sql.DB {
	t.Helper()
	db, err := sql.Open(s.driverName(), s.DSN(database))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func mustExec(t *testing.T, ctx context.Context, q interface {
	ExecContext(context.Context, string, ...any) (sql.Result, error)
}, query string) {
	t.Helper()
	if _, err := q.ExecContext(ctx, query); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

func countRows(t *testing.T, ctx context.Context, db *sql.DB, query string) int {
	t.Helper()
	var n int
	if err := db.QueryRowContext(ctx, query).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

func TestCrashKeepsCommittedAndPrepared(t *testing.T) {
	for _, kind := range []Kind{Postgres, MariaDB} {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			testCrash(t, kind)
		})
	}
}

func testCrash(t *testing.T, kind Kind) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s := startOwn(t, kind, Options{})
	if !strings.HasPrefix(s.Addr(), "127.0.0.1:") || s.External() || !s.Running() || s.Kind() != kind {
		t.Fatalf("Addr %q External %v Running %v Kind %v", s.Addr(), s.External(), s.Running(), s.Kind())
	}
	name := s.NewDatabase(t)
	wantDSN := map[Kind]string{
		Postgres: "postgres://postgres@" + s.Addr() + "/" + name + "?sslmode=disable",
		MariaDB:  "root@tcp(" + s.Addr() + ")/" + name,
	}[kind]
	if got := s.DSN(name); got != wantDSN {
		t.Errorf("DSN = %q, want %q", got, wantDSN)
	}
	wantURL := map[Kind]string{
		Postgres: wantDSN,
		MariaDB:  "mysql://root@" + s.Addr() + "/" + name,
	}[kind]
	if got := s.URL(name); got != wantURL {
		t.Errorf("URL = %q, want %q", got, wantURL)
	}

	db := open(t, s, name)
	mustExec(t, ctx, db, "CREATE TABLE items (id INT PRIMARY KEY)")
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, tx, "INSERT INTO items VALUES (1)")
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}

	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	switch kind {
	case Postgres:
		mustExec(t, ctx, conn, "BEGIN")
		mustExec(t, ctx, conn, "INSERT INTO items VALUES (2)")
		mustExec(t, ctx, conn, "PREPARE TRANSACTION 'h1'")
	case MariaDB:
		mustExec(t, ctx, conn, "XA START 'h1'")
		mustExec(t, ctx, conn, "INSERT INTO items VALUES (2)")
		mustExec(t, ctx, conn, "XA END 'h1'")
		mustExec(t, ctx, conn, "XA PREPARE 'h1'")
	}

	// A busy backend must die with the server too, or the restart
	// finds the old shared memory in use.
	sleepQuery := map[Kind]string{Postgres: "SELECT pg_sleep(120)", MariaDB: "SELECT SLEEP(120)"}[kind]
	busy := make(chan error, 1)
	go func() {
		_, err := db.ExecContext(ctx, sleepQuery)
		busy <- err
	}()
	time.Sleep(200 * time.Millisecond)

	if err := s.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	select {
	case err := <-busy:
		if err == nil {
			t.Fatal("sleeping query finished without error across Kill")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("sleeping query still running 30s after Kill")
	}
	if s.Running() {
		t.Fatal("Running after Kill")
	}
	if c, err := net.DialTimeout("tcp", s.Addr(), time.Second); err == nil {
		c.Close()
		t.Fatalf("port %s still accepts connections after Kill", s.Addr())
	}
	conn.Close() // dead with its server
	db.Close()

	addr := s.Addr()
	t0 := time.Now()
	if err := s.Restart(ctx); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	t.Logf("restart of %s after SIGKILL (crash recovery + ready): %v", kind, time.Since(t0))
	if s.Addr() != addr || !s.Running() {
		t.Fatalf("after Restart: Addr %s (was %s), Running %v", s.Addr(), addr, s.Running())
	}

	db = open(t, s, name)
	if n := countRows(t, ctx, db, "SELECT COUNT(*) FROM items WHERE id = 1"); n != 1 {
		t.Fatalf("committed row: count %d, want 1", n)
	}
	if n := countRows(t, ctx, db, "SELECT COUNT(*) FROM items WHERE id = 2"); n != 0 {
		t.Fatalf("prepared row visible before commit: count %d", n)
	}
	switch kind {
	case Postgres:
		if n := countRows(t, ctx, db, "SELECT COUNT(*) FROM pg_prepared_xacts WHERE gid = 'h1'"); n != 1 {
			t.Fatalf("pg_prepared_xacts has %d rows for h1, want 1", n)
		}
		mustExec(t, ctx, db, "COMMIT PREPARED 'h1'")
	case MariaDB:
		rows, err := db.QueryContext(ctx, "XA RECOVER")
		if err != nil {
			t.Fatal(err)
		}
		var found []string
		for rows.Next() {
			var format, gl, bl int
			var data string
			if err := rows.Scan(&format, &gl, &bl, &data); err != nil {
				t.Fatal(err)
			}
			found = append(found, data)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		rows.Close()
		if len(found) != 1 || found[0] != "h1" {
			t.Fatalf("XA RECOVER = %q, want [h1]", found)
		}
		mustExec(t, ctx, db, "XA COMMIT 'h1'")
	}
	if n := countRows(t, ctx, db, "SELECT COUNT(*) FROM items"); n != 2 {
		t.Fatalf("after committing h1: %d rows, want 2", n)
	}
	db.Close()

	// A clean stop and start keeps the data too.
	if err := s.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if s.Running() {
		t.Fatal("Running after Stop")
	}
	t0 = time.Now()
	if err := s.Restart(ctx); err != nil {
		t.Fatalf("Restart after Stop: %v", err)
	}
	t.Logf("restart of %s after clean stop: %v", kind, time.Since(t0))
	db = open(t, s, name)
	if n := countRows(t, ctx, db, "SELECT COUNT(*) FROM items"); n != 2 {
		t.Fatalf("after stop and restart: %d rows, want 2", n)
	}
	db.Close()

	dir := s.dir
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("directory %s left after Close: %v", dir, err)
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatalf("port %s still accepts connections after Close", addr)
	}
	if err := s.Restart(ctx); err == nil {
		t.Fatal("Restart after Close succeeded")
	}
}

func TestSettings(t *testing.T) {
	t.Run("postgres", func(t *testing.T) {
		t.Parallel()
		// t.TempDir is 0700: the harness must still let the server user in.
		s := startOwn(t, Postgres, Options{Dir: t.TempDir(), Settings: map[string]string{"max_prepared_transactions": "0"}})
		db := open(t, s, "")
		var v string
		if err := db.QueryRow("SHOW max_prepared_transactions").Scan(&v); err != nil {
			t.Fatal(err)
		}
		if v != "0" {
			t.Fatalf("max_prepared_transactions = %q, want 0", v)
		}
		db.Close()

		// Closing a running server must not leave its System V segment.
		b, err := os.ReadFile(filepath.Join(s.dataDir, "postmaster.pid"))
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(strings.Split(string(b), "\n")[6])
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		shm, err := os.ReadFile("/proc/sysvipc/shm")
		if err != nil {
			t.Skipf("no /proc/sysvipc/shm: %v", err)
		}
		for _, line := range strings.Split(string(shm), "\n")[1:] {
			if g := strings.Fields(line); len(g) > 1 && g[1] == f[1] {
				t.Fatalf("shared memory segment %s left after Close: %s", f[1], line)
			}
		}
	})
	t.Run("mariadb", func(t *testing.T) {
		t.Parallel()
		s := startOwn(t, MariaDB, Options{Settings: map[string]string{"innodb-lock-wait-timeout": "7"}})
		db := open(t, s, "")
		var v int
		if err := db.QueryRow("SELECT @@innodb_lock_wait_timeout").Scan(&v); err != nil {
			t.Fatal(err)
		}
		if v != 7 {
			t.Fatalf("innodb_lock_wait_timeout = %d, want 7", v)
		}
	})
}

func TestSharedAndNewDatabase(t *testing.T) {
	for _, kind := range []Kind{Postgres, MariaDB} {
		t.Run(string(kind), func(t *testing.T) {
			s := Shared(t, kind)
			if s2 := Shared(t, kind); s2 != s {
				t.Fatal("Shared returned two different servers")
			}
			a, b := s.NewDatabase(t), s.NewDatabase(t)
			if a == b {
				t.Fatalf("NewDatabase returned %q twice", a)
			}
			ctx := context.Background()
			for _, name := range []string{a, b} {
				if !dbNameRE.MatchString(name) {
					t.Fatalf("bad database name %q", name)
				}
				db := open(t, s, name)
				mustExec(t, ctx, db, "CREATE TABLE x (id INT)")
			}
			// CreateDatabase is IF NOT EXISTS.
			if err := s.CreateDatabase(ctx, a); err != nil {
				t.Fatalf("CreateDatabase of an existing database: %v", err)
			}
			if err := s.CreateDatabase(ctx, "bad;name"); err == nil {
				t.Fatal("CreateDatabase accepted bad;name")
			}

			// The same server named by URL behaves as an external one.
			ext, err := openExternal(ctx, kind, s.URL(a))
			if err != nil {
				t.Fatalf("openExternal(%s): %v", s.URL(a), err)
			}
			if !ext.External() || ext.Addr() != s.Addr() || ext.DSN(a) != s.DSN(a) {
				t.Fatalf("external: External %v Addr %s DSN %s, want %s %s", ext.External(), ext.Addr(), ext.DSN(a), s.Addr(), s.DSN(a))
			}
			for op, err := range map[string]error{"Kill": ext.Kill(), "Stop": ext.Stop(ctx), "Restart": ext.Restart(ctx)} {
				if !errors.Is(err, ErrExternal) {
					t.Errorf("external %s = %v, want ErrExternal", op, err)
				}
			}
			c := ext.NewDatabase(t)
			open(t, ext, c).Close()
		})
	}
}

func TestExternalRefusesNonLoopback(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		kind Kind
		url  string
	}{
		{Postgres, "postgres://postgres@10.1.2.3:5432/db?sslmode=disable"},
		{Postgres, "postgres://postgres@db.example.com/db"},
		{MariaDB, "mysql://root:pw@192.168.1.1:3306/db"},
		{MariaDB, "mysql://root@example.com/db"},
	} {
		_, err := openExternal(ctx, tc.kind, tc.url)
		if err == nil || !strings.Contains(err.Error(), "not a loopback address") || !isConfigError(err) {
			t.Errorf("openExternal(%s) = %v, want a loopback refusal", tc.url, err)
		}
	}
	if _, err := openExternal(ctx, MariaDB, "postgres://postgres@127.0.0.1/db"); err == nil || !isConfigError(err) {
		t.Errorf("wrong scheme accepted: %v", err)
	}
	for _, h := range []string{"127.0.0.1", "127.3.2.1", "::1", "localhost"} {
		if !isLoopback(h) {
			t.Errorf("isLoopback(%q) = false", h)
		}
	}
}

func TestDatabaseName(t *testing.T) {
	re := regexp.MustCompile(`^t_[a-z0-9_]+_[0-9]+_[0-9a-f]{6}$`)
	long := "TestSomething/" + strings.Repeat("very-long_sub test name ", 10)
	seen := map[string]bool{}
	for _, n := range []string{"TestA", "TestA", "TestX/sub#01", long, "Test/ÄÖÜ/日本"} {
		got := databaseName(n)
		if len(got) > 63 || !re.MatchString(got) || strings.Contains(got, "__") {
			t.Errorf("databaseName(%q) = %q", n, got)
		}
		if seen[got] {
			t.Errorf("databaseName(%q) = %q twice", n, got)
		}
		seen[got] = true
	}
	if got := databaseName("TestX/sub#01"); !strings.HasPrefix(got, "t_testx_sub_01_") {
		t.Errorf("databaseName(TestX/sub#01) = %q", got)
	}
}

type fakeTB struct {
	fatal, skip string
}

func (f *fakeTB) Helper()                           {}
func (f *fakeTB) Name() string                      { return "fake" }
func (f *fakeTB) Logf(string, ...any)               {}
func (f *fakeTB) Cleanup(func())                    {}
func (f *fakeTB) Fatalf(format string, args ...any) { f.fatal = fmt.Sprintf(format, args...) }
func (f *fakeTB) Skipf(format string, args ...any)  { f.skip = fmt.Sprintf(format, args...) }

func TestReportUnavailable(t *testing.T) {
	missing := fmt.Errorf("%w: initdb not found", ErrBinariesMissing)
	var dev fakeTB
	reportUnavailable(&dev, Postgres, missing, false)
	if dev.fatal != "" || !strings.Contains(dev.skip, "initdb not found") || !strings.Contains(dev.skip, "apt-get install postgresql mariadb-server") {
		t.Errorf("outside CI: fatal %q, skip %q; want a skip with reason and install hint", dev.fatal, dev.skip)
	}
	var ci fakeTB
	reportUnavailable(&ci, Postgres, missing, true)
	if ci.skip != "" || !strings.Contains(ci.fatal, "initdb not found") {
		t.Errorf("under CI: fatal %q, skip %q; want a failure with the reason", ci.fatal, ci.skip)
	}
	_, err := openExternal(context.Background(), MariaDB, "mysql://root@10.0.0.1/db")
	var bad fakeTB
	reportUnavailable(&bad, MariaDB, err, false)
	if bad.skip != "" || !strings.Contains(bad.fatal, "loopback") {
		t.Errorf("bad env URL outside CI: fatal %q, skip %q; want a failure", bad.fatal, bad.skip)
	}
}

func TestTemplateDamageIsRepaired(t *testing.T) {
	dir := t.TempDir()
	var mu sync.Mutex
	var lines []string
	opts := Options{Dir: dir, Log: func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		lines = append(lines, fmt.Sprintf(format, args...))
	}}
	logged := func(sub string) bool {
		mu.Lock()
		defer mu.Unlock()
		for _, l := range lines {
			if strings.Contains(l, sub) {
				return true
			}
		}
		return false
	}
	startClose := func() {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		s, err := Start(ctx, Postgres, opts)
		if err != nil {
			if errors.Is(err, ErrBinariesMissing) && os.Getenv("CI") != "true" {
				t.Skipf("%v", err)
			}
			t.Fatal(err)
		}
		db := open(t, s, "")
		if err := db.Ping(); err != nil {
			t.Fatal(err)
		}
		db.Close()
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	tmpl := func() string {
		m, _ := filepath.Glob(filepath.Join(dir, "threepc-cache-postgres-*"))
		if len(m) != 1 {
			t.Fatalf("templates in %s: %q, want one", dir, m)
		}
		return m[0]
	}

	startClose() // makes the template
	startClose()
	if !logged("copy of template") {
		t.Fatalf("second start did not use the template: %q", lines)
	}

	// A missing file fails the manifest check.
	if err := os.Remove(filepath.Join(tmpl(), "data", "postgresql.auto.conf")); err != nil {
		t.Fatal(err)
	}
	startClose()
	if !logged("discarding template") {
		t.Fatalf("damaged template not discarded: %q", lines)
	}

	// Same size, wrong content: the server refuses it, the harness
	// starts over with initdb.
	if err := os.WriteFile(filepath.Join(tmpl(), "data", "PG_VERSION"), []byte("99\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	startClose()
	if !logged("from template failed") {
		t.Fatalf("unusable template not replaced: %q", lines)
	}
	if b, err := os.ReadFile(filepath.Join(tmpl(), "data", "PG_VERSION")); err != nil || string(b) == "99\n" {
		t.Fatalf("template PG_VERSION = %q, %v after repair", b, err)
	}
}

// TestWaitIdle: WaitIdle returns once another session on the database is
// gone, and not before.
func TestWaitIdle(t *testing.T) {
	for _, kind := range []Kind{Postgres, MariaDB} {
		t.Run(string(kind), func(t *testing.T) {
			srv := Shared(t, kind)
			name := srv.NewDatabase(t)
			other, err := sql.Open(srv.driverName(), srv.DSN(name))
			if err != nil {
				t.Fatal(err)
			}
			if err := other.Ping(); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			if err := srv.WaitIdle(ctx, name); err == nil {
				t.Fatal("WaitIdle returned while another session was connected")
			}
			other.Close()
			ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := srv.WaitIdle(ctx, name); err != nil {
				t.Fatal(err)
			}
		})
	}
}
