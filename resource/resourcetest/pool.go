package resourcetest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/threepc/threepc/resource"
)

// checkPool checks that no connection is pinned any more and that every
// connection of the pool is clean: it holds more connections at once than
// the pool has, and on each runs SELECT 1 and an autocommit INSERT of row
// firstID+i. A connection handed back in a transaction would keep its
// insert uncommitted; one in an XA state would fail (MySQL 1399).
func checkPool(t *testing.T, ctx context.Context, r resource.Resource, firstID int) {
	t.Helper()
	db := resource.DBOf(r)
	st := db.Stats()
	if st.InUse != 0 {
		t.Errorf("after every branch was closed: %d connections still in use, want 0", st.InUse)
	}
	n := st.OpenConnections + 2
	if st.MaxOpenConnections > 0 && n > st.MaxOpenConnections {
		n = st.MaxOpenConnections
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conns := make([]interface {
		resource.DBTX
		Close() error
	}, 0, n)
	for range n {
		c, err := db.Conn(cctx)
		if err != nil {
			t.Fatalf("taking connection %d of %d from the pool: %v", len(conns)+1, n, err)
		}
		conns = append(conns, c)
	}
	errs := make(chan error, n)
	for i, c := range conns {
		go func() {
			var one int
			if err := c.QueryRowContext(cctx, "SELECT 1").Scan(&one); err != nil {
				errs <- fmt.Errorf("connection %d: SELECT 1: %w", i, err)
				return
			}
			if _, err := c.ExecContext(cctx, insertSQL(firstID+i, 1)); err != nil {
				errs <- fmt.Errorf("connection %d: insert: %w", i, err)
				return
			}
			errs <- nil
		}()
	}
	for range conns {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	for _, c := range conns {
		if err := c.Close(); err != nil {
			t.Errorf("closing a pool connection: %v", err)
		}
	}
	where := fmt.Sprintf("id >= %d AND id < %d", firstID, firstID+n)
	if got := CountRows(t, db, "rt_items", where); got != int64(n) {
		t.Errorf("autocommit inserts on %d pool connections: %d committed; a connection was handed back inside a transaction", n, got)
	}
	if st := db.Stats(); st.InUse != 0 {
		t.Errorf("after the pool check: %d connections in use, want 0", st.InUse)
	}
}

// TestPoolHygiene checks that no branch, however it ends, hands its
// connection back to the pool inside a transaction or an XA state.
func TestPoolHygiene(t *testing.T, target Target) {
	ctx := timeoutContext(t, testTimeout)
	r := newResource(t, target, "rt_pool")
	createItems(t, r)

	// Active, then closed without finishing.
	b := begin(t, ctx, r, NewXID(r))
	execIn(t, ctx, b, insertSQL(1, 10))
	closeBranch(t, b)

	// Failed, then closed.
	b = begin(t, ctx, r, NewXID(r))
	execIn(t, ctx, b, insertSQL(2, 20))
	if _, err := b.ExecContext(ctx, "INSERT INTO rt_no_such_table (id) VALUES (1)"); err == nil {
		t.Fatal("bad statement: no error")
	}
	closeBranch(t, b)

	// Prepared, closed, left unfinished.
	unfinished := []resource.XID{NewXID(r)}
	b = begin(t, ctx, r, unfinished[0])
	execIn(t, ctx, b, insertSQL(3, 30))
	prepare(t, ctx, b)
	closeBranch(t, b)

	// Prepared and committed.
	b = begin(t, ctx, r, NewXID(r))
	execIn(t, ctx, b, insertSQL(4, 40))
	prepare(t, ctx, b)
	if err := b.Commit(ctx); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	closeBranch(t, b)

	// Committed in one phase.
	b = begin(t, ctx, r, NewXID(r))
	execIn(t, ctx, b, insertSQL(5, 50))
	if err := b.CommitOnePhase(ctx); err != nil {
		t.Fatalf("CommitOnePhase: %v", err)
	}
	closeBranch(t, b)

	// Prepared and rolled back.
	b = begin(t, ctx, r, NewXID(r))
	execIn(t, ctx, b, insertSQL(6, 60))
	prepare(t, ctx, b)
	if err := b.Rollback(ctx); err != nil {
		t.Fatalf("Rollback: %v", err)
	}
	closeBranch(t, b)

	// Read-only, voted, closed. A driver that votes VotePrepared for it
	// leaves one more prepared branch to finish.
	b = begin(t, ctx, r, NewXID(r))
	CountRows(t, b, "rt_items", "")
	vote, err := b.Prepare(ctx)
	if err != nil {
		t.Fatalf("Prepare of a read-only branch: %v", err)
	}
	if vote == resource.VotePrepared {
		unfinished = append(unfinished, b.XID())
	}
	closeBranch(t, b)

	checkPool(t, ctx, r, 100)

	for _, id := range []int{1, 2, 3, 6} {
		wantNoRow(t, r, id, "branch not committed")
	}
	wantRow(t, r, 4, "committed branch")
	wantRow(t, r, 5, "branch committed in one phase")
	wantPrepared(t, ctx, r, "the prepared branches left unfinished", unfinished...)
	for _, xid := range unfinished {
		if err := byID(ctx, r.RollbackPrepared, xid); err != nil {
			t.Errorf("RollbackPrepared of an unfinished branch: %v", err)
		}
	}
	wantPrepared(t, ctx, r, "after rolling back the unfinished branch")
}

// TestAbandonBlockedBranch checks that Branch.Rollback from another
// goroutine ends a branch whose statement waits on a lock: that is how a
// transaction timeout breaks a distributed deadlock, which neither
// database can see.
func TestAbandonBlockedBranch(t *testing.T, target Target) {
	ctx := timeoutContext(t, testTimeout)
	r := newResource(t, target, "rt_abandon")
	createItems(t, r)
	MustExec(t, resource.DBOf(r), insertSQL(1, 10))

	holder := begin(t, ctx, r, NewXID(r))
	execIn(t, ctx, holder, "UPDATE rt_items SET v = 11 WHERE id = 1")
	waiter := begin(t, ctx, r, NewXID(r))
	done := make(chan error, 1)
	go func() {
		_, err := waiter.ExecContext(ctx, "UPDATE rt_items SET v = 12 WHERE id = 1")
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("UPDATE of a row locked by another branch did not wait: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	rolledBack := make(chan error, 1)
	go func() { rolledBack <- waiter.Rollback(ctx) }()
	select {
	case err := <-done:
		if err == nil {
			t.Errorf("the blocked UPDATE succeeded although its branch was rolled back")
		}
	case <-time.After(15 * time.Second):
		// Let the cleanup end the wait.
		_ = holder.Rollback(context.Background())
		t.Fatal("Rollback from another goroutine did not end a branch blocked on a lock within 15s")
	}
	select {
	case err := <-rolledBack:
		if err != nil {
			t.Errorf("Rollback of a blocked branch: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Rollback of a blocked branch did not return within 15s")
	}
	closeBranch(t, waiter)

	// The holder is unharmed and can still commit.
	prepare(t, ctx, holder)
	if err := holder.Commit(ctx); err != nil {
		t.Fatalf("Commit of the lock holder: %v", err)
	}
	closeBranch(t, holder)
	if v := QueryInt(t, resource.DBOf(r), "SELECT v FROM rt_items WHERE id = 1"); v != 11 {
		t.Errorf("v = %d, want 11 (the holder's update)", v)
	}
	wantPrepared(t, ctx, r, "after abandoning a blocked branch")
	if st := resource.DBOf(r).Stats(); st.InUse != 0 {
		t.Errorf("after abandoning a blocked branch: %d connections in use, want 0", st.InUse)
	}
}
