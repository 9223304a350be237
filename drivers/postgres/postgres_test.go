package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/oklog/ulid/v2"

	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/migrations"
	"github.com/threepc/threepc/resource"
)

func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// env is one test database on the shared server, with an admin pool on it
// for checks that must not go through the driver.
type env struct {
	srv   *harness.Server
	dbn   string
	admin *sql.DB
}

func newEnv(t *testing.T) *env {
	t.Helper()
	srv := harness.Shared(t, harness.Postgres)
	dbn := srv.NewDatabase(t)
	admin, err := sql.Open("pgx", srv.DSN(dbn))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	return &env{srv: srv, dbn: dbn, admin: admin}
}

// open returns a migrated resource on the env's database.
func (e *env) open(t *testing.T, name string) *Resource {
	t.Helper()
	r := e.openBare(t, name)
	if err := migrations.Up(testCtx(t), r.DB(), migrations.DialectPostgres); err != nil {
		t.Fatalf("migrations: %v", err)
	}
	return r
}

func (e *env) openBare(t *testing.T, name string) *Resource {
	t.Helper()
	r, err := Open(name, e.srv.DSN(e.dbn), Config{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func (e *env) exec(t *testing.T, q string, args ...any) {
	t.Helper()
	if _, err := e.admin.ExecContext(testCtx(t), q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func (e *env) count(t *testing.T, q string, args ...any) int {
	t.Helper()
	var n int
	if err := e.admin.QueryRowContext(testCtx(t), q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

// preparedCount counts the server's prepared transactions with gid.
func (e *env) preparedCount(t *testing.T, gid string) int {
	return e.count(t, "SELECT count(*) FROM pg_prepared_xacts WHERE gid = $1", gid)
}

func newXID(r *Resource) resource.XID {
	return resource.XID{GTID: ulid.Make().String(), Primary: r.Name(), Branch: r.Name(), Space: resource.SpaceTag("")}
}

func mustBegin(t *testing.T, r *Resource, xid resource.XID) *Branch {
	t.Helper()
	b, err := r.Begin(testCtx(t), xid)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	t.Cleanup(func() {
		_ = b.Rollback(context.Background())
		_ = b.Close()
	})
	return b.(*Branch)
}

func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		t.Fatalf("error %v: no *pgconn.PgError in the chain", err)
	}
	if pgErr.Code != code {
		t.Fatalf("error %v: SQLSTATE %s, want %s", err, pgErr.Code, code)
	}
}

func TestNameValidatedBeforeDBAccess(t *testing.T) {
	closed, err := sql.Open("pgx", "postgres://nobody@127.0.0.1:1/none?sslmode=disable&connect_timeout=1")
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()
	for _, name := range []string{"", "Upper", "has space", "1digit", "quote'", strings.Repeat("a", resource.MaxNameLen+1)} {
		if _, err := New(name, nil, Config{}); !errors.Is(err, resource.ErrInvalidName) {
			t.Errorf("New(%q, nil): %v, want ErrInvalidName", name, err)
		}
		if _, err := New(name, closed, Config{}); !errors.Is(err, resource.ErrInvalidName) {
			t.Errorf("New(%q, closed db): %v, want ErrInvalidName", name, err)
		}
		if _, err := Open(name, "not a dsn ===", Config{}); !errors.Is(err, resource.ErrInvalidName) {
			t.Errorf("Open(%q, bad dsn): %v, want ErrInvalidName", name, err)
		}
	}
	// A valid name gets past validation and meets the other checks.
	if _, err := New("ok", nil, Config{}); err == nil || errors.Is(err, resource.ErrInvalidName) {
		t.Errorf("New(ok, nil) = %v, want a nil-db error", err)
	}
	r, err := New("ok", closed, Config{})
	if err != nil {
		t.Fatalf("New(ok, closed pgx db): %v", err)
	}
	if r.System() != "postgresql" || r.Name() != "ok" {
		t.Errorf("System, Name = %q, %q", r.System(), r.Name())
	}
}

func TestNewRejectsOtherDrivers(t *testing.T) {
	sql.Register("threepc-postgres-test-fake", fakeDriver{})
	db, err := sql.Open("threepc-postgres-test-fake", "")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := New("ok", db, Config{}); err == nil || !strings.Contains(err.Error(), "pgx") {
		t.Fatalf("New on a non-pgx pool: %v, want an error naming pgx", err)
	}
}

// TestTrapPrepareInFailedTransaction documents the server behaviour the
// driver guards against: PREPARE TRANSACTION in a failed transaction is
// not an error, only the command tag says ROLLBACK.
func TestTrapPrepareInFailedTransaction(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t)
	c, err := pgx.Connect(ctx, e.srv.DSN(e.dbn))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "SELECT 1/0"); err == nil {
		t.Fatal("1/0 did not fail")
	}
	tag, err := c.Exec(ctx, "PREPARE TRANSACTION 'threepc-trap-demo'")
	if err != nil || tag.String() != "ROLLBACK" {
		t.Fatalf("PREPARE in a failed transaction: tag %q, err %v; want tag ROLLBACK and no error", tag, err)
	}
}

func TestPrepareFailedTransactionRefused(t *testing.T) {
	e := newEnv(t)
	r := e.open(t, "alpha")
	ctx := testCtx(t)
	e.exec(t, "CREATE TABLE t (id int PRIMARY KEY)")
	xid := newXID(r)
	b := mustBegin(t, r, xid)
	if _, err := b.ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	_, err := b.ExecContext(ctx, "INSERT INTO t VALUES (1)")
	wantCode(t, err, "23505")
	vote, err := b.Prepare(ctx)
	if !errors.Is(err, resource.ErrPrepareRefused) {
		t.Fatalf("Prepare of a failed transaction = %v, %v; want ErrPrepareRefused", vote, err)
	}
	if n := e.preparedCount(t, xid.PostgresGID()); n != 0 {
		t.Fatalf("%d prepared transactions with the gid, want 0", n)
	}
	if err := b.Rollback(ctx); err != nil {
		t.Fatalf("Rollback after refusal: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if n := e.count(t, "SELECT count(*) FROM t"); n != 0 {
		t.Fatalf("%d rows in t, want 0", n)
	}
}

func TestPrepareCommitAndConnectionReuse(t *testing.T) {
	e := newEnv(t)
	r := e.open(t, "alpha")
	ctx := testCtx(t)
	e.exec(t, "CREATE TABLE t (id int PRIMARY KEY)")
	xid := newXID(r)
	b := mustBegin(t, r, xid)
	var pid int
	if err := b.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if _, err := b.ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	vote, err := b.Prepare(ctx)
	if err != nil || vote != resource.VotePrepared {
		t.Fatalf("Prepare = %v, %v", vote, err)
	}
	if n := e.preparedCount(t, xid.PostgresGID()); n != 1 {
		t.Fatalf("%d prepared transactions with the gid, want 1", n)
	}
	// The session is outside any transaction now: statements must not
	// run there, they would autocommit outside the branch.
	if _, err := b.ExecContext(ctx, "INSERT INTO t VALUES (2)"); !errors.Is(err, errBranchNotActive) {
		t.Fatalf("Exec after Prepare: %v, want errBranchNotActive", err)
	}
	var x int
	if err := b.QueryRowContext(ctx, "SELECT 1").Scan(&x); !errors.Is(err, errBranchNotActive) {
		t.Fatalf("QueryRow after Prepare: %v, want errBranchNotActive", err)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if n := e.count(t, "SELECT count(*) FROM t"); n != 1 {
		t.Fatalf("%d rows in t, want 1", n)
	}
	// A prepared transaction is detached from its session, so the
	// connection was clean and went back to the pool.
	if s := r.DB().Stats(); s.OpenConnections != 1 || s.Idle != 1 {
		t.Fatalf("pool after Close of a committed branch: %+v, want 1 idle connection", s)
	}
	var pid2 int
	if err := r.DB().QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid2); err != nil {
		t.Fatal(err)
	}
	if pid2 != pid {
		t.Fatalf("pool connection has backend %d, want the branch's %d back", pid2, pid)
	}
}

func TestCloseDiscardsConnectionInTransaction(t *testing.T) {
	e := newEnv(t)
	r := e.open(t, "alpha")
	ctx := testCtx(t)
	e.exec(t, "CREATE TABLE t (id int PRIMARY KEY)")
	for _, failed := range []bool{false, true} {
		b := mustBegin(t, r, newXID(r))
		var pid int
		if err := b.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			t.Fatal(err)
		}
		if _, err := b.ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
			t.Fatal(err)
		}
		if failed {
			if _, err := b.ExecContext(ctx, "SELECT 1/0"); err == nil {
				t.Fatal("1/0 did not fail")
			}
		}
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		if s := r.DB().Stats(); s.OpenConnections != 0 {
			t.Fatalf("failed=%v: pool after Close of an open transaction: %+v, want no connection", failed, s)
		}
		// The server ends the session, and with it the transaction.
		deadline := time.Now().Add(10 * time.Second)
		for e.count(t, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid) != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("backend %d still alive after Close", pid)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if n := e.count(t, "SELECT count(*) FROM t"); n != 0 {
			t.Fatalf("%d rows in t, want 0", n)
		}
		if err := b.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	}
}

func TestUnknownGID(t *testing.T) {
	e := newEnv(t)
	r := e.open(t, "alpha")
	ctx := testCtx(t)
	xid := newXID(r)
	// No gid and no evidence: a commit can only be a heuristic outcome.
	err := r.CommitPrepared(ctx, xid)
	if !errors.Is(err, resource.ErrHeuristic) || errors.Is(err, resource.ErrUnknownBranch) {
		t.Fatalf("CommitPrepared of an unknown gid: %v, want ErrHeuristic", err)
	}
	wantCode(t, err, "42704")
	err = r.RollbackPrepared(ctx, xid)
	if !errors.Is(err, resource.ErrUnknownBranch) {
		t.Fatalf("RollbackPrepared of an unknown gid: %v", err)
	}
	wantCode(t, err, "42704")
	// Another resource's branch is never touched.
	other := xid
	other.Branch = "beta"
	if err := r.CommitPrepared(ctx, other); !errors.Is(err, resource.ErrInvalidID) {
		t.Fatalf("CommitPrepared of another resource's branch: %v, want ErrInvalidID", err)
	}
	if _, err := r.Begin(ctx, other); !errors.Is(err, resource.ErrInvalidID) {
		t.Fatalf("Begin with another resource's branch: %v, want ErrInvalidID", err)
	}
}

func TestDuplicateGID(t *testing.T) {
	e := newEnv(t)
	r := e.open(t, "alpha")
	ctx := testCtx(t)
	e.exec(t, "CREATE TABLE t (id int PRIMARY KEY)")
	xid := newXID(r)
	b1 := mustBegin(t, r, xid)
	if _, err := b1.ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	if _, err := b1.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	b2 := mustBegin(t, r, xid)
	if _, err := b2.ExecContext(ctx, "INSERT INTO t VALUES (2)"); err != nil {
		t.Fatal(err)
	}
	// The second branch's evidence row waits on the first one's, which
	// stays uncommitted while it is prepared: lock_timeout ends the wait.
	start := time.Now()
	_, err := b2.Prepare(ctx)
	if !errors.Is(err, resource.ErrPrepareRefused) || errors.Is(err, resource.ErrUnreachable) {
		t.Fatalf("Prepare with a gid in use: %v, want ErrPrepareRefused", err)
	}
	wantCode(t, err, "55P03")
	if d := time.Since(start); d > 30*time.Second {
		t.Fatalf("Prepare with a gid in use took %v", d)
	}
	// Rolling back the refused branch must not roll back the prepared
	// transaction that owns the gid.
	if err := b2.Rollback(ctx); err != nil {
		t.Fatalf("Rollback of the refused branch: %v", err)
	}
	if n := e.preparedCount(t, xid.PostgresGID()); n != 1 {
		t.Fatalf("%d prepared transactions with the gid after the refused branch's Rollback, want 1", n)
	}
	// Finished by someone else (recovery, by id): the branch's own
	// Commit then finds no gid (42704), and the evidence row proves the
	// commit.
	if err := r.CommitPrepared(ctx, xid); err != nil {
		t.Fatal(err)
	}
	if n := e.count(t, "SELECT count(*) FROM t"); n != 1 {
		t.Fatalf("%d rows, want the first branch's only", n)
	}
	if err := b1.Commit(ctx); err != nil {
		t.Fatalf("Commit of a branch committed by id: %v, want nil (its evidence is there)", err)
	}
	// A committed id cannot be prepared again: its evidence row is there.
	b3 := mustBegin(t, r, xid)
	_, err = b3.Prepare(ctx)
	if !errors.Is(err, resource.ErrBranchExists) || !errors.Is(err, resource.ErrPrepareRefused) {
		t.Fatalf("Prepare with the id of a committed branch: %v, want ErrBranchExists and ErrPrepareRefused", err)
	}
	wantCode(t, err, "23505")
	if err := b3.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestOutsideRollbackIsHeuristic: a prepared branch rolled back behind
// threepc's back (an operator's ROLLBACK PREPARED) is never reported
// committed: Commit and CommitPrepared find no gid and no evidence.
func TestOutsideRollbackIsHeuristic(t *testing.T) {
	e := newEnv(t)
	r := e.open(t, "alpha")
	ctx := testCtx(t)
	xid := newXID(r)
	b := mustBegin(t, r, xid)
	if _, err := b.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	e.exec(t, "ROLLBACK PREPARED '"+xid.PostgresGID()+"'")
	err := b.Commit(ctx)
	if !errors.Is(err, resource.ErrHeuristic) || errors.Is(err, resource.ErrUnknownBranch) {
		t.Fatalf("Commit after an outside rollback: %v, want ErrHeuristic (and not ErrUnknownBranch)", err)
	}
	wantCode(t, err, "42704")
	err = r.CommitPrepared(ctx, xid)
	if !errors.Is(err, resource.ErrHeuristic) {
		t.Fatalf("CommitPrepared after an outside rollback: %v, want ErrHeuristic", err)
	}
	if err := r.RollbackPrepared(ctx, xid); !errors.Is(err, resource.ErrUnknownBranch) {
		t.Fatalf("RollbackPrepared after an outside rollback: %v, want ErrUnknownBranch", err)
	}
	// The other way round: committed outside, then a rollback asked for.
	xid2 := newXID(r)
	b2 := mustBegin(t, r, xid2)
	if _, err := b2.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	e.exec(t, "COMMIT PREPARED '"+xid2.PostgresGID()+"'")
	if err := b2.Rollback(ctx); !errors.Is(err, resource.ErrHeuristic) {
		t.Fatalf("Rollback of a branch committed outside: %v, want ErrHeuristic", err)
	}
	if err := r.RollbackPrepared(ctx, xid2); !errors.Is(err, resource.ErrHeuristic) {
		t.Fatalf("RollbackPrepared of a branch committed outside: %v, want ErrHeuristic", err)
	}
}

// TestEvidenceInOneRoundTrip: the evidence row costs no round trip of its
// own: Prepare sends it with PREPARE TRANSACTION, CommitWithMarker with
// its marker row and COMMIT, and it is visible exactly once the branch
// committed.
func TestEvidenceInOneRoundTrip(t *testing.T) {
	e := newEnv(t)
	e.open(t, "alpha") // migrated
	ctx := testCtx(t)
	cfg, err := pgx.ParseConfig(e.srv.DSN(e.dbn))
	if err != nil {
		t.Fatal(err)
	}
	var writes atomic.Int64
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return writeCounter{c, &writes}, nil
	}
	db := stdlib.OpenDB(*cfg)
	t.Cleanup(func() { db.Close() })
	r, err := New("alpha", db, Config{})
	if err != nil {
		t.Fatal(err)
	}

	xid := newXID(r)
	b := mustBegin(t, r, xid)
	before := writes.Load()
	if _, err := b.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	if n := writes.Load() - before; n != 1 {
		t.Fatalf("Prepare wrote %d times to the server, want 1", n)
	}
	if ok, err := r.Committed(ctx, xid); err != nil || ok {
		t.Fatalf("Committed while prepared = %v, %v; want false", ok, err)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, err := r.Committed(ctx, xid); err != nil || !ok {
		t.Fatalf("Committed after Commit = %v, %v; want true", ok, err)
	}

	llr := newXID(r)
	b2 := mustBegin(t, r, llr)
	m := resource.Marker{GTID: llr.GTID, State: resource.StatePreCommit, Primary: "alpha", Participants: []string{"alpha", "beta"}}
	before = writes.Load()
	if err := b2.CommitWithMarker(ctx, m); err != nil {
		t.Fatal(err)
	}
	if n := writes.Load() - before; n != 1 {
		t.Fatalf("CommitWithMarker wrote %d times to the server, want 1", n)
	}
	if ok, err := r.Committed(ctx, llr); err != nil || !ok {
		t.Fatalf("Committed after CommitWithMarker = %v, %v; want true", ok, err)
	}
	if got, err := r.ReadMarker(ctx, llr.GTID); err != nil || got.State != resource.StatePreCommit {
		t.Fatalf("ReadMarker after CommitWithMarker = %+v, %v", got, err)
	}
}

// writeCounter counts the client's writes: one per round trip.
type writeCounter struct {
	net.Conn
	n *atomic.Int64
}

func (w writeCounter) Write(p []byte) (int, error) {
	w.n.Add(1)
	return w.Conn.Write(p)
}

func TestTempTableRefused(t *testing.T) {
	e := newEnv(t)
	r := e.open(t, "alpha")
	ctx := testCtx(t)
	xid := newXID(r)
	b := mustBegin(t, r, xid)
	if _, err := b.ExecContext(ctx, "CREATE TEMP TABLE tt (x int)"); err != nil {
		t.Fatal(err)
	}
	_, err := b.Prepare(ctx)
	if !errors.Is(err, resource.ErrPrepareRefused) {
		t.Fatalf("Prepare with a temp table: %v, want ErrPrepareRefused", err)
	}
	wantCode(t, err, "0A000")
	if n := e.preparedCount(t, xid.PostgresGID()); n != 0 {
		t.Fatalf("%d prepared, want 0", n)
	}
	if err := b.Rollback(ctx); err != nil {
		t.Fatalf("Rollback: %v", err)
	}
}

func TestTooManyPrepared(t *testing.T) {
	e := newEnv(t)
	r := e.open(t, "alpha")
	ctx := testCtx(t)
	limit := e.count(t, "SELECT setting::int FROM pg_settings WHERE name = 'max_prepared_transactions'")
	used := e.count(t, "SELECT count(*) FROM pg_prepared_xacts")
	c, err := pgx.Connect(ctx, e.srv.DSN(e.dbn))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) }) // after the filler's clean-up
	var fill []string
	t.Cleanup(func() {
		for _, g := range fill {
			_, _ = c.Exec(context.Background(), "ROLLBACK PREPARED '"+g+"'")
		}
	})
	for i := used; i < limit; i++ {
		g := fmt.Sprintf("filler-%s-%d", e.dbn, i)
		if _, err := c.Exec(ctx, "BEGIN"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Exec(ctx, "PREPARE TRANSACTION '"+g+"'"); err != nil {
			t.Fatalf("filling the prepared transaction slots (%d of %d): %v", i, limit, err)
		}
		fill = append(fill, g)
	}
	b := mustBegin(t, r, newXID(r))
	if _, err := b.ExecContext(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	_, err = b.Prepare(ctx)
	if !errors.Is(err, resource.ErrTooManyPrepared) || !errors.Is(err, resource.ErrPrepareRefused) {
		t.Fatalf("Prepare beyond max_prepared_transactions: %v, want ErrTooManyPrepared", err)
	}
	wantCode(t, err, "53200")
	if err := b.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestMarkers(t *testing.T) {
	e := newEnv(t)
	r := e.open(t, "alpha")
	ctx := testCtx(t)
	before := time.Now()
	m := resource.Marker{
		GTID: ulid.Make().String(), State: resource.StatePreCommit,
		Primary: "alpha", Participants: []string{"alpha", "beta"}, Owner: "instance-1",
		Space: resource.SpaceTag("team-a"),
	}
	if err := r.InsertMarker(ctx, m); err != nil {
		t.Fatalf("InsertMarker: %v", err)
	}
	abort := m
	abort.State = resource.StateAbort
	err := r.InsertMarker(ctx, abort)
	if !errors.Is(err, resource.ErrMarkerExists) {
		t.Fatalf("second InsertMarker: %v, want ErrMarkerExists", err)
	}
	wantCode(t, err, "23505")
	got, err := r.ReadMarker(ctx, m.GTID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != resource.StatePreCommit || got.Primary != "alpha" || strings.Join(got.Participants, ",") != "alpha,beta" || got.Owner != "instance-1" || got.Space != m.Space {
		t.Fatalf("ReadMarker = %+v", got)
	}
	if got.CreatedAt.Before(before.Add(-time.Minute)) || got.CreatedAt.After(time.Now().Add(time.Minute)) {
		t.Fatalf("CreatedAt %v, want about now", got.CreatedAt)
	}
	if got.Age < 0 || got.Age > time.Minute {
		t.Fatalf("Age %v, want a little", got.Age)
	}
	e.exec(t, "UPDATE threepc_markers SET created_at = now() - interval '90 minutes' WHERE gtid = $1", m.GTID)
	if got, err := r.ReadMarker(ctx, m.GTID); err != nil || got.Age < 90*time.Minute || got.Age > 91*time.Minute {
		t.Fatalf("Age of a row 90 minutes old by the database clock: %v, %v", got.Age, err)
	}
	// An evidence row of the same gtid is not a marker.
	e.exec(t, "INSERT INTO threepc_markers (gtid, branch, state, primary_name, participants, owner) VALUES ($1, 'beta', 'evidence', 'alpha', '', '')", m.GTID)
	if _, err := r.ReadMarker(ctx, ulid.Make().String()); !errors.Is(err, resource.ErrNoMarker) {
		t.Fatalf("ReadMarker of a missing row: %v, want ErrNoMarker", err)
	}
	m2 := m
	m2.GTID = ulid.Make().String()
	if err := r.InsertMarker(ctx, m2); err != nil {
		t.Fatal(err)
	}
	list, err := r.ListMarkers(ctx)
	if err != nil || len(list) != 2 || list[0].GTID != m.GTID || list[1].GTID != m2.GTID {
		t.Fatalf("ListMarkers = %+v, %v", list, err)
	}
	e.exec(t, "UPDATE threepc_markers SET state = 'abort' WHERE gtid = $1 AND branch = ''", m2.GTID)
	if err := r.Tombstone(ctx, m.GTID, m2.GTID, ulid.Make().String()); err != nil {
		t.Fatal(err)
	}
	if got, err := r.ReadMarker(ctx, m.GTID); err != nil || got.State != resource.StateCommitted {
		t.Fatalf("ReadMarker after Tombstone = %+v, %v; want committed", got, err)
	}
	if got, err := r.ReadMarker(ctx, m2.GTID); err != nil || got.State != resource.StateAbort {
		t.Fatalf("ReadMarker of an abort row after Tombstone = %+v, %v; want abort", got, err)
	}
	if n := e.count(t, "SELECT count(*) FROM threepc_markers WHERE state = 'evidence'"); n != 1 {
		t.Fatalf("%d evidence rows after Tombstone, want 1", n)
	}
	if err := r.DeleteMarkers(ctx, m.GTID, m2.GTID, ulid.Make().String()); err != nil {
		t.Fatal(err)
	}
	if list, err := r.ListMarkers(ctx); err != nil || len(list) != 0 {
		t.Fatalf("ListMarkers after delete = %+v, %v", list, err)
	}
	if n := e.count(t, "SELECT count(*) FROM threepc_markers"); n != 0 {
		t.Fatalf("%d rows after DeleteMarkers, want 0 (evidence too)", n)
	}
}

func TestMarkerTableMissing(t *testing.T) {
	e := newEnv(t)
	r := e.openBare(t, "alpha")
	ctx := testCtx(t)
	m := resource.Marker{GTID: ulid.Make().String(), State: resource.StateAbort, Primary: "alpha", Participants: []string{"alpha"}}
	err := r.InsertMarker(ctx, m)
	if !errors.Is(err, resource.ErrMarkerTableMissing) || !strings.Contains(err.Error(), "migrat") {
		t.Fatalf("InsertMarker without the table: %v, want ErrMarkerTableMissing telling to migrate", err)
	}
	wantCode(t, err, "42P01")
	if _, err := r.ReadMarker(ctx, m.GTID); !errors.Is(err, resource.ErrMarkerTableMissing) {
		t.Fatalf("ReadMarker without the table: %v", err)
	}
	if _, err := r.ListMarkers(ctx); !errors.Is(err, resource.ErrMarkerTableMissing) {
		t.Fatalf("ListMarkers without the table: %v", err)
	}
	err = r.Check(ctx)
	if !errors.Is(err, resource.ErrMarkerTableMissing) || !strings.Contains(err.Error(), "migrat") {
		t.Fatalf("Check without the table: %v", err)
	}
	// Migration 1 only: the table has no branch column for evidence rows.
	fsys, err := migrations.FS(migrations.DialectPostgres)
	if err != nil {
		t.Fatal(err)
	}
	v1, err := fs.ReadFile(fsys, "1_markers.up.sql")
	if err != nil {
		t.Fatal(err)
	}
	e.exec(t, string(v1))
	err = r.Check(ctx)
	if !errors.Is(err, resource.ErrMarkerTableMissing) || !strings.Contains(err.Error(), "migrat") || !strings.Contains(err.Error(), "branch") {
		t.Fatalf("Check on migration 1 only: %v, want ErrMarkerTableMissing naming the branch column and the migrations", err)
	}
	if _, err := r.ListMarkers(ctx); !errors.Is(err, resource.ErrMarkerTableMissing) {
		t.Fatalf("ListMarkers on migration 1 only: %v", err)
	}
	b := mustBegin(t, r, newXID(r))
	_, err = b.Prepare(ctx)
	if !errors.Is(err, resource.ErrMarkerTableMissing) || !errors.Is(err, resource.ErrPrepareRefused) {
		t.Fatalf("Prepare on migration 1 only: %v, want ErrPrepareRefused and ErrMarkerTableMissing", err)
	}
	wantCode(t, err, "42703")
	if err := b.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	e.exec(t, "DROP TABLE threepc_markers")
	if err := migrations.Up(ctx, r.DB(), migrations.DialectPostgres); err != nil {
		t.Fatal(err)
	}
	if err := r.Check(ctx); err != nil {
		t.Fatalf("Check after the migrations: %v", err)
	}
}

func TestCheckPreparedTransactionsDisabled(t *testing.T) {
	ctx := testCtx(t)
	srv := harness.Own(t, harness.Postgres, harness.Options{Settings: map[string]string{"max_prepared_transactions": "0"}})
	r, err := Open("alpha", srv.DSN(""), Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := migrations.Up(ctx, r.DB(), migrations.DialectPostgres); err != nil {
		t.Fatal(err)
	}
	err = r.Check(ctx)
	if !errors.Is(err, resource.ErrPreparedTransactionsDisabled) {
		t.Fatalf("Check: %v, want ErrPreparedTransactionsDisabled", err)
	}
	for _, want := range []string{"max_prepared_transactions", "postgresql.conf", "restart"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Check error %q does not mention %q", err, want)
		}
	}
	// PREPARE itself fails with 55000 "prepared transactions are disabled".
	b, err := r.Begin(ctx, newXID(r))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_, err = b.Prepare(ctx)
	if !errors.Is(err, resource.ErrPreparedTransactionsDisabled) || !errors.Is(err, resource.ErrPrepareRefused) {
		t.Fatalf("Prepare with max_prepared_transactions=0: %v", err)
	}
	wantCode(t, err, "55000")
}

func TestCheck(t *testing.T) {
	e := newEnv(t)
	r := e.open(t, "alpha")
	if err := r.Check(testCtx(t)); err != nil {
		t.Fatalf("Check on a good setup: %v", err)
	}
	bad, err := Open("alpha", "postgres://postgres@127.0.0.1:1/x?sslmode=disable&connect_timeout=2", Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	err = bad.Check(testCtx(t))
	if !errors.Is(err, resource.ErrUnreachable) || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("Check of a closed port: %v, want ErrUnreachable naming the address", err)
	}
}

func TestRecoverIgnoresForeignBranches(t *testing.T) {
	e := newEnv(t)
	other := newEnv(t)
	alpha := e.open(t, "alpha")
	ctx := testCtx(t)
	beta, err := New("beta", alpha.DB(), Config{}) // same database, another resource
	if err != nil {
		t.Fatal(err)
	}
	alphaElsewhere := other.open(t, "alpha") // same name, another database
	prepare := func(r *Resource) resource.XID {
		t.Helper()
		xid := newXID(r)
		b, err := r.Begin(ctx, xid)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		if _, err := b.Prepare(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.RollbackPrepared(context.Background(), xid) })
		return xid
	}
	mine := prepare(alpha)
	prepare(beta)
	prepare(alphaElsewhere)
	c, err := pgx.Connect(ctx, e.srv.DSN(e.dbn))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) }) // after the foreign transaction's clean-up
	foreign := "foreign-" + e.dbn
	if _, err := c.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "PREPARE TRANSACTION '"+foreign+"'"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = c.Exec(context.Background(), "ROLLBACK PREPARED '"+foreign+"'") })

	got, err := alpha.Recover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].XID != mine {
		t.Fatalf("Recover = %+v, want only %v", got, mine)
	}
	if got[0].PreparedAt.IsZero() || got[0].Owner != "postgres" {
		t.Fatalf("Recover = %+v, want prepared time and owner", got[0])
	}
	if err := alpha.CommitPrepared(ctx, mine); err != nil {
		t.Fatal(err)
	}
	if got, err := alpha.Recover(ctx); err != nil || len(got) != 0 {
		t.Fatalf("Recover after commit = %+v, %v", got, err)
	}
}

// TestListServerPrepared: ListServerPrepared lists every prepared
// transaction of the server, threepc's and other software's, of this
// database and of others, with its database, prepared time and owner.
func TestListServerPrepared(t *testing.T) {
	e := newEnv(t)
	other := newEnv(t)
	alpha := e.open(t, "alpha")
	elsewhere := other.open(t, "alpha") // same name, another database
	ctx := testCtx(t)
	prepare := func(r *Resource) resource.XID {
		t.Helper()
		b := mustBegin(t, r, newXID(r))
		if _, err := b.Prepare(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.RollbackPrepared(context.Background(), b.XID()) })
		return b.XID()
	}
	mine := prepare(alpha)
	theirs := prepare(elsewhere)
	foreign := "foreign-lsp-" + e.dbn
	c, err := pgx.Connect(ctx, e.srv.DSN(e.dbn))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	for _, q := range []string{"BEGIN", "PREPARE TRANSACTION '" + foreign + "'"} {
		if _, err := c.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	t.Cleanup(func() { _, _ = c.Exec(context.Background(), "ROLLBACK PREPARED '"+foreign+"'") })

	before := time.Now()
	got, err := alpha.ListServerPrepared(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]resource.ServerPrepared{}
	for _, p := range got {
		byID[p.ID] = p
	}
	want := []resource.ServerPrepared{
		{ID: mine.PostgresGID(), Ours: true, XID: mine, Database: e.dbn, SameDatabase: true},
		{ID: theirs.PostgresGID(), Ours: true, XID: theirs, Database: other.dbn},
		{ID: foreign, Database: e.dbn, SameDatabase: true},
	}
	for _, w := range want {
		p, ok := byID[w.ID]
		if !ok {
			t.Errorf("ListServerPrepared does not list %s: %+v", w.ID, got)
			continue
		}
		if p.PreparedAt.IsZero() || p.PreparedAt.After(before.Add(time.Minute)) || p.Owner != "postgres" {
			t.Errorf("%s: prepared at %v by %q, want the server's prepared time and owner", w.ID, p.PreparedAt, p.Owner)
		}
		p.PreparedAt, p.Owner = time.Time{}, ""
		if p != w {
			t.Errorf("ListServerPrepared: %s: got %+v, want %+v", w.ID, p, w)
		}
	}
}

func TestRollbackCancelsBlockedStatement(t *testing.T) {
	e := newEnv(t)
	r := e.open(t, "alpha")
	ctx := testCtx(t)
	e.exec(t, "CREATE TABLE t (id int PRIMARY KEY, v int)")
	e.exec(t, "INSERT INTO t VALUES (1, 0)")
	holder := mustBegin(t, r, newXID(r))
	if _, err := holder.ExecContext(ctx, "UPDATE t SET v = 1 WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	waiter := mustBegin(t, r, newXID(r))
	done := make(chan error, 1)
	go func() {
		// No deadline: only Rollback can end this statement.
		_, err := waiter.ExecContext(context.Background(), "UPDATE t SET v = 2 WHERE id = 1")
		done <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for e.count(t, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = $1", e.dbn) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the second UPDATE never waited for the lock")
		}
		time.Sleep(20 * time.Millisecond)
	}
	rbCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := waiter.Rollback(rbCtx); err != nil {
		t.Fatalf("Rollback of the blocked branch: %v", err)
	}
	select {
	case err := <-done:
		wantCode(t, err, "57014")
	case <-time.After(10 * time.Second):
		t.Fatal("blocked statement still running after Rollback")
	}
	if err := waiter.Close(); err != nil {
		t.Fatal(err)
	}
	if err := holder.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestPrepareOnKilledSession(t *testing.T) {
	e := newEnv(t)
	r := e.open(t, "alpha")
	ctx := testCtx(t)
	e.exec(t, "CREATE TABLE t (id int PRIMARY KEY)")
	xid := newXID(r)
	b := mustBegin(t, r, xid)
	if _, err := b.ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	e.exec(t, "SELECT pg_terminate_backend($1)", int(b.pid))
	_, err := b.Prepare(ctx)
	if err == nil {
		t.Fatal("Prepare on a terminated session succeeded")
	}
	if !errors.Is(err, resource.ErrUnreachable) {
		t.Fatalf("Prepare on a terminated session: %v, want ErrUnreachable", err)
	}
	// Nothing was prepared and nothing committed: a commit cannot be nil.
	if err := b.Commit(ctx); !errors.Is(err, resource.ErrHeuristic) {
		t.Fatalf("Commit after a lost PREPARE that did not happen: %v, want ErrHeuristic", err)
	}
	if err := b.Rollback(ctx); err != nil {
		t.Fatalf("Rollback after a lost PREPARE: %v", err)
	}
	if n := e.preparedCount(t, xid.PostgresGID()); n != 0 {
		t.Fatalf("%d prepared, want 0", n)
	}
}

func TestCommitOnePhase(t *testing.T) {
	e := newEnv(t)
	r := e.open(t, "alpha")
	ctx := testCtx(t)
	e.exec(t, "CREATE TABLE t (id int PRIMARY KEY)")
	b := mustBegin(t, r, newXID(r))
	if _, err := b.ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	if err := b.CommitOnePhase(ctx); err != nil {
		t.Fatalf("CommitOnePhase: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if n := e.count(t, "SELECT count(*) FROM t"); n != 1 {
		t.Fatalf("%d rows, want 1", n)
	}
	// COMMIT of a failed transaction answers ROLLBACK without an error.
	b2 := mustBegin(t, r, newXID(r))
	if _, err := b2.ExecContext(ctx, "INSERT INTO t VALUES (2)"); err != nil {
		t.Fatal(err)
	}
	if _, err := b2.ExecContext(ctx, "INSERT INTO t VALUES (1)"); err == nil {
		t.Fatal("duplicate insert did not fail")
	}
	err := b2.CommitOnePhase(ctx)
	if !errors.Is(err, resource.ErrPrepareRefused) || !strings.Contains(err.Error(), "rolled back") {
		t.Fatalf("CommitOnePhase of a failed transaction: %v", err)
	}
	if err := b2.Rollback(ctx); err != nil {
		t.Fatalf("Rollback after a refused one-phase commit: %v", err)
	}
	if err := b2.Close(); err != nil {
		t.Fatal(err)
	}
	if s := r.DB().Stats(); s.InUse != 0 {
		t.Fatalf("pool: %+v", s)
	}
	if n := e.count(t, "SELECT count(*) FROM t"); n != 1 {
		t.Fatalf("%d rows, want 1", n)
	}
}
