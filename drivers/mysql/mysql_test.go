package mysql

import (
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mysqldriver "github.com/go-sql-driver/mysql"

	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/migrations"
	"github.com/threepc/threepc/resource"
)

func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// newDB returns a pool on a fresh, migrated database of the shared server,
// with a table t(id, v).
func newDB(t *testing.T, migrate bool) (*harness.Server, *sql.DB, string) {
	t.Helper()
	srv := harness.Shared(t, harness.MariaDB)
	name := srv.NewDatabase(t)
	db, err := sql.Open("mysql", srv.DSN(name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	ctx := testCtx(t)
	if migrate {
		if err := migrations.Up(ctx, db, migrations.DialectMySQL); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.ExecContext(ctx, "CREATE TABLE t (id INT PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB"); err != nil {
		t.Fatal(err)
	}
	return srv, db, name
}

var nameSeq atomic.Uint64

// newResource returns a resource on a fresh database. Its name gets a
// unique suffix: XA RECOVER lists the whole shared server, and resources
// are told apart by name only.
func newResource(t *testing.T, name string, cfg Config) (*Resource, *sql.DB) {
	t.Helper()
	name = fmt.Sprintf("%s%d", name, nameSeq.Add(1))
	_, db, _ := newDB(t, true)
	r, err := New(name, db, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, db
}

var gtidSeq atomic.Uint64

// newGTID returns a fresh, valid gtid: a ULID-shaped string (millisecond
// timestamp, then randomness), unique within the test binary.
func newGTID() string {
	const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
	var out [resource.GTIDLen]byte
	ms := uint64(time.Now().UnixMilli())
	for i := 9; i >= 0; i-- {
		out[i] = crockford[ms&31]
		ms >>= 5
	}
	var rnd [16]byte
	_, _ = rand.Read(rnd[:])
	seq := gtidSeq.Add(1)
	for i := 10; i < resource.GTIDLen; i++ {
		out[i] = crockford[(rnd[i-10]^byte(seq>>(uint(i-10)%8*5)))&31]
	}
	return string(out[:])
}

func newXID(r *Resource) resource.XID {
	return resource.XID{GTID: newGTID(), Primary: "primary", Branch: r.Name(), Space: resource.SpaceTag("")}
}

func mustBegin(t *testing.T, r *Resource, x resource.XID) *Branch {
	t.Helper()
	b, err := r.Begin(testCtx(t), x)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return b.(*Branch)
}

func mustExec(t *testing.T, q interface {
	ExecContext(context.Context, string, ...any) (sql.Result, error)
}, query string, args ...any) {
	t.Helper()
	if _, err := q.ExecContext(testCtx(t), query, args...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

func count(t *testing.T, db *sql.DB, query string, args ...any) int {
	t.Helper()
	var n int
	if err := db.QueryRowContext(testCtx(t), query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

// rawRecover lists every prepared XA of the server as gtrid/bqual/formatID.
func rawRecover(t *testing.T, db *sql.DB) []string {
	t.Helper()
	rows, err := db.QueryContext(testCtx(t), "XA RECOVER")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var f, gl, bl int
		var data []byte
		if err := rows.Scan(&f, &gl, &bl, &data); err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("%s/%s/%d", data[:gl], data[gl:], f))
	}
	return out
}

// listed reports whether XA RECOVER lists branch x (any session).
func listed(t *testing.T, db *sql.DB, x resource.XID) bool {
	for _, s := range rawRecover(t, db) {
		parts := strings.Split(s, "/")
		if len(parts) != 3 {
			continue
		}
		if y, _, ok := resource.ParseMySQL(resource.MySQLFormatID, parts[0], parts[1]); ok && parts[2] == fmt.Sprint(resource.MySQLFormatID) && y.SameBranch(x) {
			return true
		}
	}
	return false
}

// checkPool takes every connection the pool has open at once and runs a
// table query on each: a connection left in an XA state fails with 1399.
func checkPool(t *testing.T, db *sql.DB) {
	t.Helper()
	ctx := testCtx(t)
	n := db.Stats().OpenConnections
	conns := make([]*sql.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		var k int
		if err := c.QueryRowContext(ctx, "SELECT COUNT(*) FROM t").Scan(&k); err != nil {
			t.Fatalf("pool connection unusable: %v", err)
		}
		var inTrx int
		if err := c.QueryRowContext(ctx, "SELECT @@in_transaction").Scan(&inTrx); err != nil || inTrx != 0 {
			t.Fatalf("pool connection in a transaction: %d %v", inTrx, err)
		}
	}
}

func wantErrno(t *testing.T, err error, n uint16) {
	t.Helper()
	var me *mysqldriver.MySQLError
	if !errors.As(err, &me) || me.Number != n {
		t.Errorf("error %v: want MySQL error %d in the chain", err, n)
	}
}

// TestAttached: the prepared branch stays on its pinned session, where
// it is committed; its id carries that session.
func TestAttached(t *testing.T) {
	r, db := newResource(t, "shop", Config{})
	ctx := testCtx(t)
	b := mustBegin(t, r, newXID(r))
	x := b.XID()
	if x.Session == 0 || x.Session != uint64(b.threadID) {
		t.Errorf("XID().Session = %d, want the session %d", x.Session, b.threadID)
	}
	mustExec(t, b, "INSERT INTO t VALUES (1, 10)")
	vote, err := b.Prepare(ctx)
	if err != nil || vote != resource.VotePrepared {
		t.Fatalf("Prepare = %v, %v", vote, err)
	}
	if r.System() != "mariadb" {
		t.Errorf("System = %q", r.System())
	}
	got, err := r.Recover(ctx)
	if err != nil || len(got) != 1 || got[0].XID != x {
		t.Fatalf("Recover = %v, %v; want %v", got, err, x)
	}
	if ok, err := r.Committed(ctx, x); err != nil || ok {
		t.Fatalf("Committed of a prepared branch = %v, %v", ok, err)
	}
	if n := count(t, db, "SELECT COUNT(*) FROM t"); n != 0 {
		t.Fatalf("prepared row visible: %d", n)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if err := b.Commit(ctx); err != nil {
		t.Errorf("second Commit: %v", err)
	}
	if err := b.Rollback(ctx); err == nil {
		t.Error("Rollback of a committed branch succeeded")
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if n := count(t, db, "SELECT COUNT(*) FROM t WHERE v = 10"); n != 1 {
		t.Fatalf("committed row count %d", n)
	}
	if ok, err := r.Committed(ctx, x); err != nil || !ok {
		t.Fatalf("Committed after Commit = %v, %v", ok, err)
	}
	if listed(t, db, x) {
		t.Error("committed branch still listed by XA RECOVER")
	}
	// The evidence row is not a marker.
	if ms, err := r.ListMarkers(ctx); err != nil || len(ms) != 0 {
		t.Errorf("ListMarkers = %v, %v; want no markers", ms, err)
	}
	checkPool(t, db)
}

// TestClosedPreparedCommittedByID: a prepared branch whose coordinator
// went away (the connection closed) is finished by id from another pool;
// the evidence row then answers every later question.
func TestClosedPreparedCommittedByID(t *testing.T) {
	r, db := newResource(t, "shop", Config{})
	ctx := testCtx(t)
	db.SetMaxOpenConns(3)
	b := mustBegin(t, r, newXID(r))
	x := b.XID()
	mustExec(t, b, "INSERT INTO t VALUES (2, 20)")
	if v, err := b.Prepare(ctx); err != nil || v != resource.VotePrepared {
		t.Fatalf("Prepare = %v, %v", v, err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// The discarded session never reaches the pool.
	checkPool(t, db)

	// Another application instance: its own pool on the same database.
	other, err := sql.Open("mysql", dsnOf(t, db))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	r2, err := New(r.Name(), other, Config{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := r2.Recover(ctx)
	if err != nil || len(got) != 1 || got[0].XID != x {
		t.Fatalf("Recover from another pool = %v, %v", got, err)
	}
	if err := r2.CommitPrepared(ctx, x); err != nil {
		t.Fatalf("CommitPrepared: %v", err)
	}
	if n := count(t, db, "SELECT COUNT(*) FROM t WHERE id = 2"); n != 1 {
		t.Fatalf("row not committed: %d", n)
	}
	// Gone from the server, proven by its evidence.
	if err := r2.CommitPrepared(ctx, x); err != nil {
		t.Fatalf("second CommitPrepared = %v, want nil (the evidence row is there)", err)
	}
	if err := r2.RollbackPrepared(ctx, x); !errors.Is(err, resource.ErrHeuristic) {
		t.Fatalf("RollbackPrepared of a committed branch = %v, want ErrHeuristic", err)
	}
	// A branch that never existed: no evidence.
	err = r2.CommitPrepared(ctx, newXID(r2))
	if !errors.Is(err, resource.ErrHeuristic) || !strings.Contains(err.Error(), "restart the MariaDB server, then run recovery") {
		t.Fatalf("CommitPrepared of an unknown branch = %v, want ErrHeuristic saying what to do", err)
	}
	if err := r2.RollbackPrepared(ctx, newXID(r2)); !errors.Is(err, resource.ErrUnknownBranch) {
		t.Fatalf("RollbackPrepared of an unknown branch = %v, want ErrUnknownBranch", err)
	}
	checkPool(t, db)
}

// TestTakeOverLiveSession: recovery finishes a branch whose coordinator
// still holds it on a live session: the session is killed, the server's
// hand-over awaited, and the coordinator then learns the outcome from the
// evidence.
func TestTakeOverLiveSession(t *testing.T) {
	r, db := newResource(t, "shop", Config{})
	ctx := testCtx(t)
	for _, commit := range []bool{true, false} {
		id := map[bool]int{true: 7, false: 8}[commit]
		b := mustBegin(t, r, newXID(r))
		x := b.XID()
		mustExec(t, b, "INSERT INTO t VALUES (?, 1)", id)
		if v, err := b.Prepare(ctx); err != nil || v != resource.VotePrepared {
			t.Fatalf("Prepare = %v, %v", v, err)
		}
		var err error
		if commit {
			err = r.CommitPrepared(ctx, x)
		} else {
			err = r.RollbackPrepared(ctx, x)
		}
		if err != nil {
			t.Fatalf("by id while attached (commit=%v): %v", commit, err)
		}
		if n := count(t, db, fmt.Sprintf("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %d", x.Session)); n != 0 {
			t.Errorf("the holding session %d is still there", x.Session)
		}
		err = b.Commit(ctx)
		switch {
		case commit && err != nil:
			t.Fatalf("Branch.Commit after recovery committed it = %v, want nil (evidence)", err)
		case !commit && !errors.Is(err, resource.ErrHeuristic):
			t.Fatalf("Branch.Commit after recovery rolled it back = %v, want ErrHeuristic", err)
		}
		if err := b.Rollback(ctx); commit && err == nil || !commit && err != nil && !errors.Is(err, resource.ErrUnknownBranch) {
			t.Fatalf("Branch.Rollback after it was finished elsewhere (commit=%v) = %v", commit, err)
		}
		b.Close()
	}
	if n := count(t, db, "SELECT COUNT(*) FROM t"); n != 1 {
		t.Fatalf("%d rows, want 1", n)
	}
	checkPool(t, db)
}

// dsnOf recovers the DSN of a test pool from the shared server.
func dsnOf(t *testing.T, db *sql.DB) string {
	t.Helper()
	var name string
	if err := db.QueryRowContext(testCtx(t), "SELECT DATABASE()").Scan(&name); err != nil {
		t.Fatal(err)
	}
	return harness.Shared(t, harness.MariaDB).DSN(name)
}

// TestLostConnectionAfterPrepare: the pinned connection dies after XA
// PREPARE (killed from outside); Commit finds the branch by id.
func TestLostConnectionAfterPrepare(t *testing.T) {
	r, db := newResource(t, "shop", Config{})
	ctx := testCtx(t)
	for _, commit := range []bool{true, false} {
		x := newXID(r)
		b := mustBegin(t, r, x)
		mustExec(t, b, "INSERT INTO t VALUES (?, 1)", map[bool]int{true: 3, false: 4}[commit])
		if _, err := b.Prepare(ctx); err != nil {
			t.Fatal(err)
		}
		mustExec(t, db, fmt.Sprintf("KILL CONNECTION %d", b.threadID))
		var err error
		if commit {
			err = b.Commit(ctx)
		} else {
			err = b.Rollback(ctx)
		}
		if err != nil {
			t.Fatalf("commit=%v after the session died: %v", commit, err)
		}
		if listed(t, db, x) {
			t.Error("branch still prepared")
		}
	}
	if n := count(t, db, "SELECT COUNT(*) FROM t WHERE id IN (3, 4)"); n != 1 {
		t.Fatalf("rows %d, want only the committed one", n)
	}
	if n := count(t, db, "SELECT COUNT(*) FROM t WHERE id = 3"); n != 1 {
		t.Fatal("the committed branch's row is missing")
	}
	checkPool(t, db)
}

func TestReadOnlyVote(t *testing.T) {
	r, db := newResource(t, "shop", Config{ReadOnlyVote: true})
	ctx := testCtx(t)
	mustExec(t, db, "INSERT INTO t VALUES (1, 1), (2, 2)")
	mustExec(t, db, "CREATE FUNCTION bump() RETURNS INT MODIFIES SQL DATA BEGIN UPDATE t SET v = v + 1 WHERE id = 1; RETURN 1; END")
	for _, c := range []struct {
		name  string
		stmts []string
		want  resource.Vote
	}{
		{"nothing", nil, resource.VoteReadOnly},
		{"select", []string{"SELECT * FROM t", "SELECT v, COUNT(*) FROM t GROUP BY v ORDER BY 2"}, resource.VoteReadOnly},
		{"locking read", []string{"SELECT * FROM t WHERE id = 1 FOR UPDATE"}, resource.VoteReadOnly},
		{"update", []string{"UPDATE t SET v = v + 1 WHERE id = 2"}, resource.VotePrepared},
		{"insert", []string{"INSERT INTO t VALUES (3, 3)"}, resource.VotePrepared},
		{"delete all", []string{"DELETE FROM t"}, resource.VotePrepared},
		{"write in a function", []string{"SELECT bump()"}, resource.VotePrepared},
		{"insert ignore", []string{"INSERT IGNORE INTO t VALUES (1, 9)"}, resource.VotePrepared},
	} {
		x := newXID(r)
		b := mustBegin(t, r, x)
		for _, s := range c.stmts {
			rows, err := b.QueryContext(ctx, s)
			if err != nil {
				t.Fatalf("%s: %s: %v", c.name, s, err)
			}
			rows.Close()
		}
		vote, err := b.Prepare(ctx)
		if err != nil || vote != c.want {
			t.Fatalf("%s: Prepare = %v, %v; want %v", c.name, vote, err, c.want)
		}
		if vote == resource.VoteReadOnly {
			// Nothing left prepared, and the connection went back to the pool.
			if listed(t, db, x) {
				t.Errorf("%s: read-only branch left prepared", c.name)
			}
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
		} else {
			if !listed(t, db, x) {
				t.Errorf("%s: prepared branch not listed", c.name)
			}
			if err := b.Rollback(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n := count(t, db, "SELECT SUM(v) FROM t"); n != 3 {
		t.Errorf("a branch's write leaked: sum %d", n)
	}
	checkPool(t, db)
}

// TestReadOnlyWithoutVote: with the vote off (the default), a branch that
// only read is prepared like any other. Its evidence row is a write, so MariaDB's trap
// for read-only XA (a detached one answers 1402 and is gone) no longer
// applies: the branch survives its session and commits by id.
func TestReadOnlyWithoutVote(t *testing.T) {
	r, db := newResource(t, "shop", Config{})
	ctx := testCtx(t)
	for _, commit := range []bool{true, false} {
		b := mustBegin(t, r, newXID(r))
		x := b.XID()
		if rows, err := b.QueryContext(ctx, "SELECT * FROM t"); err != nil {
			t.Fatal(err)
		} else {
			rows.Close()
		}
		if v, err := b.Prepare(ctx); err != nil || v != resource.VotePrepared {
			t.Fatalf("Prepare with the vote off = %v, %v", v, err)
		}
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		var err error
		if commit {
			err = r.CommitPrepared(ctx, x)
		} else {
			err = r.RollbackPrepared(ctx, x)
		}
		if err != nil {
			t.Fatalf("commit=%v by id: %v", commit, err)
		}
		if ok, err := r.Committed(ctx, x); err != nil || ok != commit {
			t.Fatalf("Committed = %v, %v; want %v", ok, err, commit)
		}
		if listed(t, db, x) {
			t.Fatal("still listed")
		}
	}
	checkPool(t, db)
}

func TestSQLErrorThenRollback(t *testing.T) {
	r, db := newResource(t, "shop", Config{})
	ctx := testCtx(t)
	x := newXID(r)
	b := mustBegin(t, r, x)
	mustExec(t, b, "INSERT INTO t VALUES (1, 1)")
	_, err := b.ExecContext(ctx, "INSERT INTO t VALUES (1, 2)")
	wantErrno(t, err, 1062)
	_, err = b.Prepare(ctx)
	if !errors.Is(err, resource.ErrPrepareRefused) {
		t.Fatalf("Prepare after a failed statement = %v, want ErrPrepareRefused", err)
	}
	wantErrno(t, err, 1062)
	if err := b.CommitOnePhase(ctx); !errors.Is(err, resource.ErrPrepareRefused) {
		t.Fatalf("CommitOnePhase after a failed statement = %v", err)
	}
	if err := b.Rollback(ctx); err != nil {
		t.Fatalf("Rollback: %v", err)
	}
	if err := b.Rollback(ctx); err != nil {
		t.Fatalf("second Rollback: %v", err)
	}
	b.Close()
	if n := count(t, db, "SELECT COUNT(*) FROM t"); n != 0 {
		t.Fatalf("rolled back row visible")
	}
	// QueryRowContext errors count too.
	b = mustBegin(t, r, newXID(r))
	var v int
	err = b.QueryRowContext(ctx, "SELECT v FROM no_such_table").Scan(&v)
	wantErrno(t, err, 1146)
	if _, err := b.Prepare(ctx); !errors.Is(err, resource.ErrPrepareRefused) {
		t.Fatalf("Prepare after a failed QueryRow = %v", err)
	}
	if err := b.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	b.Close()
	checkPool(t, db)
}

func TestCommitOnePhase(t *testing.T) {
	r, db := newResource(t, "shop", Config{})
	ctx := testCtx(t)
	b := mustBegin(t, r, newXID(r))
	mustExec(t, b, "INSERT INTO t VALUES (5, 5)")
	if err := b.CommitOnePhase(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(ctx); err != nil {
		t.Errorf("Commit after CommitOnePhase: %v", err)
	}
	b.Close()
	if n := count(t, db, "SELECT COUNT(*) FROM t WHERE id = 5"); n != 1 {
		t.Fatal("not committed")
	}
	// Statements after the end of the branch are refused.
	if _, err := b.ExecContext(ctx, "INSERT INTO t VALUES (6, 6)"); err == nil {
		t.Fatal("statement on a finished branch succeeded")
	}
	var one int
	if err := b.QueryRowContext(ctx, "SELECT 1").Scan(&one); err == nil {
		t.Fatal("query on a closed branch succeeded")
	}
	checkPool(t, db)
}

func TestRollbackStates(t *testing.T) {
	r, db := newResource(t, "shop", Config{})
	ctx := testCtx(t)
	// Active, never ended.
	b := mustBegin(t, r, newXID(r))
	mustExec(t, b, "INSERT INTO t VALUES (1, 1)")
	if err := b.Rollback(ctx); err != nil {
		t.Fatalf("Rollback of an active branch: %v", err)
	}
	b.Close()
	// Prepared, on the pinned connection.
	x := newXID(r)
	b = mustBegin(t, r, x)
	mustExec(t, b, "INSERT INTO t VALUES (2, 2)")
	if _, err := b.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Rollback(ctx); err != nil {
		t.Fatalf("Rollback of a prepared branch: %v", err)
	}
	if err := b.Commit(ctx); err == nil {
		t.Fatal("Commit after Rollback succeeded")
	}
	b.Close()
	if listed(t, db, x) {
		t.Fatal("rolled back branch listed")
	}
	// Active, closed without rollback: the server rolls it back.
	b = mustBegin(t, r, newXID(r))
	mustExec(t, b, "INSERT INTO t VALUES (3, 3)")
	b.Close()
	if n := count(t, db, "SELECT COUNT(*) FROM t"); n != 0 {
		t.Fatalf("%d rows survived", n)
	}
	checkPool(t, db)
}

// TestDeadlockRollbackOnly: a deadlock victim's branch is rollback-only
// (MariaDB 10.11 answers every later statement, XA END included, with 1399
// "ROLLBACK ONLY state"); Prepare refuses and Rollback finishes it.
func TestDeadlockRollbackOnly(t *testing.T) {
	r, db := newResource(t, "shop", Config{})
	ctx := testCtx(t)
	mustExec(t, db, "INSERT INTO t VALUES (1, 1), (2, 2)")
	a := mustBegin(t, r, newXID(r))
	b := mustBegin(t, r, newXID(r))
	mustExec(t, a, "UPDATE t SET v = 10 WHERE id = 1")
	mustExec(t, b, "UPDATE t SET v = 20 WHERE id = 2")
	// Statements through the raw connections, so that the branches do not
	// record the deadlock error themselves: this tests XA END's answer.
	errA, errB := make(chan error, 1), make(chan error, 1)
	go func() { _, err := a.conn.ExecContext(ctx, "UPDATE t SET v = 11 WHERE id = 2"); errA <- err }()
	time.Sleep(200 * time.Millisecond)
	go func() { _, err := b.conn.ExecContext(ctx, "UPDATE t SET v = 21 WHERE id = 1"); errB <- err }()
	e1, e2 := <-errA, <-errB
	if (e1 == nil) == (e2 == nil) {
		t.Fatalf("want exactly one deadlock victim: %v, %v", e1, e2)
	}
	victim, survivor := a, b
	if e2 != nil {
		victim, survivor = b, a
	}
	_, err := victim.Prepare(ctx)
	if !errors.Is(err, resource.ErrPrepareRefused) {
		t.Fatalf("victim Prepare = %v", err)
	}
	wantErrno(t, err, 1399)
	if err := victim.Rollback(ctx); err != nil {
		t.Fatalf("victim Rollback: %v", err)
	}
	if v, err := survivor.Prepare(ctx); err != nil || v != resource.VotePrepared {
		t.Fatalf("survivor Prepare = %v, %v", v, err)
	}
	if err := survivor.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	a.Close()
	b.Close()
	checkPool(t, db)
}

// TestRollbackBreaksLockWait: Rollback from another goroutine while the
// branch waits for a lock returns at once, not after the lock timeout.
func TestRollbackBreaksLockWait(t *testing.T) {
	r, db := newResource(t, "shop", Config{})
	ctx := testCtx(t)
	mustExec(t, db, "INSERT INTO t VALUES (1, 1)")
	holder := mustBegin(t, r, newXID(r))
	mustExec(t, holder, "UPDATE t SET v = 2 WHERE id = 1")
	waiter := mustBegin(t, r, newXID(r))
	done := make(chan error, 1)
	go func() {
		_, err := waiter.ExecContext(ctx, "UPDATE t SET v = 3 WHERE id = 1")
		done <- err
	}()
	for waiter.running.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	if err := waiter.Rollback(ctx); err != nil {
		t.Fatalf("Rollback: %v", err)
	}
	if err := <-done; err == nil {
		t.Fatal("the waiting statement succeeded")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Rollback took %v", d)
	}
	waiter.Close()
	if err := holder.CommitOnePhase(ctx); err != nil {
		t.Fatal(err)
	}
	holder.Close()
	if n := count(t, db, "SELECT v FROM t WHERE id = 1"); n != 2 {
		t.Fatalf("v = %d", n)
	}
	checkPool(t, db)
}

func TestErrorMappings(t *testing.T) {
	r, db := newResource(t, "shop", Config{})
	ctx := testCtx(t)
	x := newXID(r)
	b := mustBegin(t, r, x)
	// The id is in use. Branch ids carry their session, so the server
	// cannot tell (no 1440 across sessions); the evidence row's primary
	// key refuses the second one at prepare.
	mustExec(t, b, "INSERT INTO t VALUES (1, 1)")
	if _, err := b.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	b.Close()
	dup, err := r.Begin(ctx, x)
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, dup, "INSERT INTO t VALUES (2, 2)")
	_, err = dup.Prepare(ctx)
	if !errors.Is(err, resource.ErrPrepareRefused) {
		t.Fatalf("Prepare of a used id = %v, want ErrPrepareRefused", err)
	}
	wantErrno(t, err, 1062)
	if err := dup.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	dup.Close()
	// Unknown branch.
	err = r.RollbackPrepared(ctx, newXID(r))
	if !errors.Is(err, resource.ErrUnknownBranch) {
		t.Fatalf("RollbackPrepared of an unknown id = %v", err)
	}
	// Ids of other resources and malformed ids are refused before the database.
	if _, err := r.Begin(ctx, resource.XID{GTID: newGTID(), Primary: "p", Branch: "other", Space: resource.SpaceTag("")}); !errors.Is(err, resource.ErrInvalidID) {
		t.Errorf("Begin with another resource's id = %v", err)
	}
	if err := r.CommitPrepared(ctx, resource.XID{GTID: "bad", Primary: "p", Branch: r.Name(), Space: resource.SpaceTag("")}); !errors.Is(err, resource.ErrInvalidID) {
		t.Errorf("CommitPrepared with a bad gtid = %v", err)
	}
	// 1062: marker exists.
	m := resource.Marker{GTID: newGTID(), State: resource.StatePreCommit, Primary: "shop", Participants: []string{"pg", "shop"}, Owner: "instance-1"}
	if err := r.InsertMarker(ctx, m); err != nil {
		t.Fatal(err)
	}
	m2 := m
	m2.State = resource.StateAbort
	err = r.InsertMarker(ctx, m2)
	if !errors.Is(err, resource.ErrMarkerExists) {
		t.Fatalf("second InsertMarker = %v", err)
	}
	wantErrno(t, err, 1062)
	got, err := r.ReadMarker(ctx, m.GTID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != resource.StatePreCommit || got.Primary != "shop" || strings.Join(got.Participants, ",") != "pg,shop" || got.Owner != "instance-1" {
		t.Errorf("ReadMarker = %+v", got)
	}
	if d := time.Since(got.CreatedAt); d < -time.Minute || d > time.Minute {
		t.Errorf("CreatedAt %v is off by %v", got.CreatedAt, d)
	}
	if _, err := r.ReadMarker(ctx, newGTID()); !errors.Is(err, resource.ErrNoMarker) {
		t.Errorf("ReadMarker of a missing gtid = %v", err)
	}
	if err := r.InsertMarker(ctx, resource.Marker{GTID: newGTID(), State: "maybe", Primary: "shop", Participants: []string{"shop"}}); !errors.Is(err, resource.ErrInvalidID) {
		t.Errorf("invalid marker = %v", err)
	}
	_ = db
}

func TestMarkers(t *testing.T) {
	r, _ := newResource(t, "shop", Config{})
	ctx := testCtx(t)
	var gtids []string
	for range 3 {
		g := newGTID()
		gtids = append(gtids, g)
		if err := r.InsertMarker(ctx, resource.Marker{GTID: g, State: resource.StateAbort, Primary: "shop", Participants: []string{"shop", "x"}, Owner: "o"}); err != nil {
			t.Fatal(err)
		}
	}
	ms, err := r.ListMarkers(ctx)
	if err != nil || len(ms) != 3 {
		t.Fatalf("ListMarkers = %v, %v", ms, err)
	}
	for i := 1; i < len(ms); i++ {
		if ms[i-1].GTID >= ms[i].GTID {
			t.Errorf("not ordered by gtid: %s, %s", ms[i-1].GTID, ms[i].GTID)
		}
	}
	if err := r.DeleteMarkers(ctx, gtids[0], gtids[2], newGTID()); err != nil {
		t.Fatal(err)
	}
	ms, err = r.ListMarkers(ctx)
	if err != nil || len(ms) != 1 || ms[0].GTID != gtids[1] {
		t.Fatalf("after delete: %v, %v", ms, err)
	}
	if err := r.DeleteMarkers(ctx); err != nil {
		t.Errorf("DeleteMarkers(): %v", err)
	}
	if err := r.DeleteMarkers(ctx, "nope"); !errors.Is(err, resource.ErrInvalidID) {
		t.Errorf("DeleteMarkers with a bad gtid = %v", err)
	}
}

func TestMarkerTableMissing(t *testing.T) {
	_, db, _ := newDB(t, false)
	r, err := New("shop", db, Config{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	checks := map[string]error{
		"Check":         r.Check(ctx),
		"InsertMarker":  r.InsertMarker(ctx, resource.Marker{GTID: newGTID(), State: resource.StateAbort, Primary: "shop", Participants: []string{"shop"}}),
		"DeleteMarkers": r.DeleteMarkers(ctx, newGTID()),
	}
	_, checks["ReadMarker"] = r.ReadMarker(ctx, newGTID())
	_, checks["ListMarkers"] = r.ListMarkers(ctx)
	for name, err := range checks {
		if !errors.Is(err, resource.ErrMarkerTableMissing) || !strings.Contains(err.Error(), "migrations") {
			t.Errorf("%s = %v, want ErrMarkerTableMissing telling to run the migrations", name, err)
		}
		wantErrno(t, err, 1146)
	}
}

func TestCheck(t *testing.T) {
	r, _ := newResource(t, "shop", Config{})
	if err := r.Check(testCtx(t)); err != nil {
		t.Fatalf("Check: %v", err)
	}
	dead, err := Open("dead", "mysql://root@127.0.0.1:1/x?timeout=1s", Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	err = dead.Check(testCtx(t))
	if !errors.Is(err, resource.ErrUnreachable) || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("Check of a dead server = %v", err)
	}
}

func TestOpenURLAndDSN(t *testing.T) {
	srv := harness.Shared(t, harness.MariaDB)
	name := srv.NewDatabase(t)
	for _, dsn := range []string{srv.URL(name), srv.DSN(name)} {
		r, err := Open("shop", dsn, Config{})
		if err != nil {
			t.Fatal(err)
		}
		ctx := testCtx(t)
		if err := migrations.Up(ctx, r.DB(), migrations.DialectMySQL); err != nil {
			t.Fatal(err)
		}
		if err := r.Check(ctx); err != nil {
			t.Fatalf("Check via %q: %v", dsn, err)
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		if err := r.DB().PingContext(ctx); err == nil {
			t.Fatal("Close did not close the pool Open opened")
		}
	}
	// New leaves the caller's pool open.
	_, db, _ := newDB(t, true)
	r, err := New("shop", db, Config{})
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	if err := db.PingContext(testCtx(t)); err != nil {
		t.Fatalf("Close closed a pool it did not open: %v", err)
	}
}

// prepareRaw prepares an XA with a raw id on a pinned connection of db
// and returns a function that rolls it back there.
func prepareRaw(t *testing.T, db *sql.DB, xid string) {
	t.Helper()
	ctx := testCtx(t)
	c, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"XA START " + xid, "XA END " + xid, "XA PREPARE " + xid} {
		if _, err := c.ExecContext(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	t.Cleanup(func() {
		if _, err := c.ExecContext(context.Background(), "XA ROLLBACK "+xid); err != nil {
			t.Errorf("XA ROLLBACK %s: %v", xid, err)
		}
		c.Close()
	})
}

func TestRecoverFilters(t *testing.T) {
	r, db := newResource(t, "shop", Config{})
	other, otherDB := newResource(t, "warehouse", Config{})
	ctx := testCtx(t)
	g := newGTID()
	// Foreign: another formatID, and ours with a gtrid threepc did not write.
	prepareRaw(t, db, "'foreign1'")
	prepareRaw(t, db, fmt.Sprintf("'%s:%s:primary:extra','%s',%d", resource.Prefix, g, r.Name(), resource.MySQLFormatID))
	prepareRaw(t, db, fmt.Sprintf("'3pc1:notagtid:primary','%s',%d", r.Name(), resource.MySQLFormatID))
	prepareRaw(t, db, fmt.Sprintf("'3pc2:%s:primary','%s',%d", g, r.Name(), resource.MySQLFormatID))
	prepareRaw(t, db, fmt.Sprintf("'3pc1:%s:primary','%s',1", g, r.Name()))
	// A resource of the same name on another database of the server.
	_, twinDB, _ := newDB(t, true)
	twin, err := New(r.Name(), twinDB, Config{})
	if err != nil {
		t.Fatal(err)
	}
	tb := mustBegin(t, twin, newXID(twin))
	mustExec(t, tb, "INSERT INTO t VALUES (1, 1)")
	if _, err := tb.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	// Another resource's branch on the same server.
	ob := mustBegin(t, other, newXID(other))
	ox := ob.XID()
	mustExec(t, ob, "INSERT INTO t VALUES (1, 1)")
	if _, err := ob.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	// Ours, of two namespaces: Recover lists every namespace.
	x2 := newXID(r)
	x2.Space = resource.SpaceTag("other deployment")
	b2 := mustBegin(t, r, x2)
	mustExec(t, b2, "INSERT INTO t VALUES (2, 2)")
	if _, err := b2.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	b := mustBegin(t, r, newXID(r))
	x := b.XID()
	mustExec(t, b, "INSERT INTO t VALUES (1, 1)")
	if _, err := b.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := r.Recover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !(got[0].XID == x && got[1].XID == b2.XID() || got[1].XID == x && got[0].XID == b2.XID()) {
		t.Errorf("Recover = %+v, want only %v and %v (raw: %v)", got, x, b2.XID(), rawRecover(t, db))
	}
	if tg, err := twin.Recover(ctx); err != nil || len(tg) != 1 || tg[0].XID != tb.XID() {
		t.Errorf("twin Recover = %+v, %v; want only %v", tg, err, tb.XID())
	}
	gotOther, err := other.Recover(ctx)
	if err != nil || len(gotOther) != 1 || gotOther[0].XID != ox {
		t.Errorf("other Recover = %+v, %v", gotOther, err)
	}
	for _, br := range []*Branch{b, b2, ob, tb} {
		if err := br.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
	}
	_ = otherDB
}

// TestListServerPrepared: ListServerPrepared lists every prepared XA
// transaction of the server: this database's threepc branches, another
// database's, and other software's, each as ours or not, with the
// database known only from threepc's ids and no prepared time.
func TestListServerPrepared(t *testing.T) {
	r, db := newResource(t, "shop", Config{})
	ctx := testCtx(t)
	foreignGtrid := "lsp" + newGTID()
	prepareRaw(t, db, fmt.Sprintf("'%s','other',7", foreignGtrid))
	_, twinDB, _ := newDB(t, true)
	twin, err := New(r.Name(), twinDB, Config{})
	if err != nil {
		t.Fatal(err)
	}
	tb := mustBegin(t, twin, newXID(twin))
	mustExec(t, tb, "INSERT INTO t VALUES (1, 1)")
	if _, err := tb.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	b := mustBegin(t, r, newXID(r))
	mustExec(t, b, "INSERT INTO t VALUES (1, 1)")
	if _, err := b.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, br := range []*Branch{b, tb} {
			if err := br.Rollback(context.Background()); err != nil {
				t.Errorf("rollback %s: %v", br.XID(), err)
			}
			br.Close()
		}
	})

	got, err := r.ListServerPrepared(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]resource.ServerPrepared{}
	for _, p := range got {
		if !p.PreparedAt.IsZero() || p.Database != "" || p.Owner != "" {
			t.Errorf("%+v: XA RECOVER gives no time, database nor owner", p)
		}
		byID[p.ID] = p
	}
	want := []resource.ServerPrepared{
		{ID: b.lit, Ours: true, XID: b.XID(), SameDatabase: true},
		{ID: tb.lit, Ours: true, XID: tb.XID()},
		{ID: fmt.Sprintf("X'%x',X'%x',7", foreignGtrid, "other")},
	}
	for _, w := range want {
		if p, ok := byID[w.ID]; !ok || p != w {
			t.Errorf("ListServerPrepared: %s: got %+v (listed %v), want %+v; raw: %v", w.ID, p, ok, w, rawRecover(t, db))
		}
	}
	// What Recover lists is there too, as ours and of this database.
	rec, err := r.Recover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, pb := range rec {
		found := false
		for _, p := range got {
			found = found || p.Ours && p.SameDatabase && p.XID == pb.XID
		}
		if !found {
			t.Errorf("Recover lists %s, ListServerPrepared does not", pb.XID)
		}
	}
}

// TestConcurrentBranches runs branches in parallel on a small pool and
// checks that the pool never holds an XA-state connection afterwards.
func TestConcurrentBranches(t *testing.T) {
	r, db := newResource(t, "shop", Config{})
	db.SetMaxOpenConns(4)
	ctx := testCtx(t)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, err := r.Begin(ctx, newXID(r))
			if err != nil {
				errs <- err
				return
			}
			defer b.Close()
			if _, err := b.ExecContext(ctx, "INSERT INTO t VALUES (?, ?)", i, i); err != nil {
				errs <- err
				return
			}
			switch i % 4 {
			case 0: // abandoned while active
				return
			case 1: // prepared and abandoned: discarded, committed by id below
				_, err = b.Prepare(ctx)
			case 2:
				if _, err = b.Prepare(ctx); err == nil {
					err = b.Commit(ctx)
				}
			case 3:
				err = b.CommitOnePhase(ctx)
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	checkPool(t, db)
	left, err := r.Recover(ctx)
	if err != nil || len(left) != 4 {
		t.Fatalf("Recover = %d branches, %v; want the 4 abandoned prepared ones", len(left), err)
	}
	for _, p := range left {
		if err := r.CommitPrepared(ctx, p.XID); err != nil {
			t.Fatal(err)
		}
	}
	if n := count(t, db, "SELECT COUNT(*) FROM t"); n != 12 {
		t.Fatalf("%d rows, want 12", n)
	}
}
