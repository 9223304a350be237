package resourcetest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/threepc/threepc/resource"
)

// Helpers shared by the suite and by drivers' own tests. They take a
// testing.TB and fail it on error, so test code reads as a list of steps.

// NewGTID returns a fresh, valid global transaction id (a ULID, so gtids
// made later sort later).
func NewGTID() string { return ulid.Make().String() }

// NewXID returns an id for a branch of a new global transaction on r, with
// r as its own primary, in the default namespace. Use the branch's own
// XID() once it has begun: a driver may add the session to it.
func NewXID(r resource.Resource) resource.XID {
	return resource.XID{GTID: NewGTID(), Primary: r.Name(), Branch: r.Name(), Space: resource.SpaceTag("")}
}

// Placeholder returns the n-th (1-based) bind placeholder in the dialect
// of r: "$n" on PostgreSQL, "?" on MySQL and MariaDB. Portable tests pass
// literals instead where they can.
func Placeholder(r resource.Resource, n int) string {
	if r.System() == "postgresql" {
		return "$" + strconv.Itoa(n)
	}
	return "?"
}

// MustExec runs a statement on q (a pool, a connection, a branch) and fails
// the test on error.
func MustExec(t testing.TB, q resource.DBTX, query string, args ...any) sql.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := q.ExecContext(ctx, query, args...)
	if err != nil {
		t.Fatalf("exec %q: %v", query, err)
	}
	return res
}

// QueryInt runs a query that returns one integer and fails the test on
// error.
func QueryInt(t testing.TB, q resource.DBTX, query string, args ...any) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var n int64
	if err := q.QueryRowContext(ctx, query, args...).Scan(&n); err != nil {
		t.Fatalf("query %q: %v", query, err)
	}
	return n
}

// CountRows returns the number of rows of table matching where (an SQL
// condition; empty means every row), as seen by q.
func CountRows(t testing.TB, q resource.DBTX, table, where string) int64 {
	t.Helper()
	query := "SELECT COUNT(*) FROM " + table
	if where != "" {
		query += " WHERE " + where
	}
	return QueryInt(t, q, query)
}

// WaitReachable pings db until it answers or timeout passes, then fails
// the test. Use it after a server restart: the first attempts find the
// pool's dead connections, which database/sql discards.
func WaitReachable(t testing.TB, db *sql.DB, timeout time.Duration) {
	t.Helper()
	if err := waitReachable(db, timeout); err != nil {
		t.Fatal(err)
	}
}

func waitReachable(db *sql.DB, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var err error
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		err = db.PingContext(ctx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("database not reachable after %v: %w", timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// RetryUnreachable calls f until it returns an error that is not a
// connection error (resource.IsConnectionError) or timeout passes, and
// returns f's last error. Recovery retries such errors, so a test of what
// happens after a restart may too.
func RetryUnreachable(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil || !resource.IsConnectionError(err) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// FinishAll rolls back every prepared branch that r.Recover lists, so that
// a failed test leaves no locks (and, on PostgreSQL, nothing that blocks
// DROP DATABASE) behind. Errors are logged, not fatal: it is meant for
// t.Cleanup.
func FinishAll(t testing.TB, r resource.Resource) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	branches, err := r.Recover(ctx)
	if err != nil {
		t.Logf("cleanup: recover on %s: %v", r.Name(), err)
		return
	}
	for _, b := range branches {
		if err := r.RollbackPrepared(ctx, b.XID); err != nil && !errors.Is(err, resource.ErrUnknownBranch) {
			t.Logf("cleanup: rollback %s: %v", b.XID, err)
		}
	}
}
