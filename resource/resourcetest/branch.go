package resourcetest

import (
	"errors"
	"testing"

	"github.com/threepc/threepc/resource"
)

// TestPrepareCommit checks a branch that is prepared and then committed on
// its own connection: invisible to others while prepared, listed by
// Recover, without evidence; committed, visible and with evidence after
// Commit. Close is idempotent.
func TestPrepareCommit(t *testing.T, target Target) {
	ctx := timeoutContext(t, testTimeout)
	r := newResource(t, target, "rt_commit")
	createItems(t, r)

	b := begin(t, ctx, r, NewXID(r))
	xid := b.XID()
	execIn(t, ctx, b, insertSQL(1, 10))
	if n := CountRows(t, b, "rt_items", "id = 1"); n != 1 {
		t.Fatalf("inside the branch, its own row: found %d rows, want 1", n)
	}
	prepare(t, ctx, b)
	wantNoRow(t, r, 1, "prepared, not committed, seen from another connection")
	wantPrepared(t, ctx, r, "after Prepare", xid)
	wantCommitted(t, ctx, r, xid, false, "prepared, not committed")

	if err := b.Commit(ctx); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	closeBranch(t, b)
	closeBranch(t, b) // Close is idempotent.
	wantRow(t, r, 1, "after Commit")
	wantCommitted(t, ctx, r, xid, true, "after Commit")
	if v := QueryInt(t, resource.DBOf(r), "SELECT v FROM rt_items WHERE id = 1"); v != 10 {
		t.Errorf("after Commit: v = %d, want 10", v)
	}
	wantPrepared(t, ctx, r, "after Commit")
}

// TestPrepareRollback checks a branch that is prepared and then rolled
// back on its own connection: nothing of it is left, neither rows nor
// prepared branch nor evidence.
func TestPrepareRollback(t *testing.T, target Target) {
	ctx := timeoutContext(t, testTimeout)
	r := newResource(t, target, "rt_rollback")
	createItems(t, r)

	b := begin(t, ctx, r, NewXID(r))
	xid := b.XID()
	execIn(t, ctx, b, insertSQL(1, 10))
	prepare(t, ctx, b)
	wantNoRow(t, r, 1, "prepared, seen from another connection")
	wantPrepared(t, ctx, r, "after Prepare", xid)

	if err := b.Rollback(ctx); err != nil {
		t.Fatalf("Rollback of a prepared branch: %v", err)
	}
	closeBranch(t, b)
	wantNoRow(t, r, 1, "after Rollback")
	wantPrepared(t, ctx, r, "after Rollback")
	wantCommitted(t, ctx, r, xid, false, "after Rollback")
}

// TestUnprepared checks branches finished without Prepare: Rollback of an
// active branch and CommitOnePhase.
func TestUnprepared(t *testing.T, target Target) {
	ctx := timeoutContext(t, testTimeout)
	r := newResource(t, target, "rt_unprep")
	createItems(t, r)

	t.Run("RollbackActive", func(t *testing.T) {
		b := begin(t, ctx, r, NewXID(r))
		execIn(t, ctx, b, insertSQL(1, 10))
		if err := b.Rollback(ctx); err != nil {
			t.Fatalf("Rollback of an active branch: %v", err)
		}
		closeBranch(t, b)
		wantNoRow(t, r, 1, "after Rollback of an active branch")
		wantPrepared(t, ctx, r, "after Rollback of an active branch")
	})
	t.Run("CommitOnePhase", func(t *testing.T) {
		b := begin(t, ctx, r, NewXID(r))
		execIn(t, ctx, b, insertSQL(2, 20))
		if err := b.CommitOnePhase(ctx); err != nil {
			t.Fatalf("CommitOnePhase: %v", err)
		}
		closeBranch(t, b)
		wantRow(t, r, 2, "after CommitOnePhase")
		wantPrepared(t, ctx, r, "after CommitOnePhase")
	})
}

// TestFailedBranchRefusesPrepare checks that a branch whose statement
// failed refuses to prepare (ErrPrepareRefused) and leaves nothing behind.
func TestFailedBranchRefusesPrepare(t *testing.T, target Target) {
	ctx := timeoutContext(t, testTimeout)
	r := newResource(t, target, "rt_failed")
	createItems(t, r)
	MustExec(t, resource.DBOf(r), insertSQL(5, 50))

	for _, tc := range []struct {
		name, bad string
	}{
		{"BadStatement", "INSERT INTO rt_no_such_table (id) VALUES (1)"},
		{"DuplicateKey", insertSQL(5, 51)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			xid := NewXID(r)
			b := begin(t, ctx, r, xid)
			// A good statement first: on MySQL an error rolls back only
			// its own statement, and this row must not be committed.
			execIn(t, ctx, b, insertSQL(6, 60))
			if _, err := b.ExecContext(ctx, tc.bad); err == nil {
				t.Fatalf("exec %q inside the branch: no error", tc.bad)
			}
			vote, err := b.Prepare(ctx)
			if err == nil {
				t.Errorf("Prepare after a failed statement: vote %v, no error; want an error wrapping ErrPrepareRefused", vote)
			} else if !errors.Is(err, resource.ErrPrepareRefused) {
				t.Errorf("Prepare after a failed statement: %v, want an error wrapping ErrPrepareRefused", err)
			}
			// PostgreSQL's PREPARE TRANSACTION in a failed transaction
			// rolls back without an error: the list is the truth.
			wantPrepared(t, ctx, r, "after Prepare of a failed branch")
			wantGone(t, b.Rollback(ctx), "Rollback of a branch that refused to prepare")
			closeBranch(t, b)
			wantPrepared(t, ctx, r, "after Rollback of a failed branch")
			wantNoRow(t, r, 6, "written by a failed branch")
			if v := QueryInt(t, resource.DBOf(r), "SELECT v FROM rt_items WHERE id = 5"); v != 50 {
				t.Errorf("row 5: v = %d, want 50", v)
			}
		})
	}
}

// TestReadOnlyBranch checks a branch that wrote nothing: it votes
// read-only (and is finished) or prepared, and every finish after the
// vote (Close, Rollback, Commit) is answered as the vote allows.
func TestReadOnlyBranch(t *testing.T, target Target) {
	ctx := timeoutContext(t, testTimeout)
	r := newResource(t, target, "rt_readonly")
	createItems(t, r)
	MustExec(t, resource.DBOf(r), insertSQL(1, 10))

	for _, finish := range []string{"Close", "Rollback", "Commit"} {
		t.Run(finish, func(t *testing.T) {
			b := begin(t, ctx, r, NewXID(r))
			if n := CountRows(t, b, "rt_items", ""); n != 1 {
				t.Errorf("branch sees %d rows, want 1", n)
			}
			vote, err := b.Prepare(ctx)
			if err != nil {
				t.Fatalf("Prepare of a read-only branch: %v", err)
			}
			switch vote {
			case resource.VoteReadOnly:
				wantPrepared(t, ctx, r, "after a read-only vote")
				switch finish {
				case "Rollback":
					wantGone(t, b.Rollback(ctx), "Rollback after a read-only vote")
				case "Commit":
					// Not needed, but a coordinator that does it anyway
					// must not be told the branch is lost.
					if err := b.Commit(ctx); err != nil && !errors.Is(err, resource.ErrUnknownBranch) {
						t.Errorf("Commit after a read-only vote: %v, want nil or ErrUnknownBranch", err)
					}
				}
			case resource.VotePrepared:
				wantPrepared(t, ctx, r, "after a prepared vote of a read-only branch", b.XID())
				switch finish {
				case "Rollback":
					if err := b.Rollback(ctx); err != nil {
						t.Errorf("Rollback of a prepared read-only branch: %v", err)
					}
				default:
					// A prepared read-only branch is committed like any
					// other (MariaDB answers a by-id XA COMMIT of one with
					// XA_RBROLLBACK 1402, which proves nothing).
					if err := b.Commit(ctx); err != nil {
						t.Errorf("Commit of a prepared read-only branch: %v", err)
					}
				}
			default:
				t.Fatalf("Prepare = %v, want %v or %v", vote, resource.VotePrepared, resource.VoteReadOnly)
			}
			closeBranch(t, b)
			wantPrepared(t, ctx, r, "after finishing a read-only branch")
		})
	}
	checkPool(t, ctx, r, 1000)

	// A writing branch on the same pool still works.
	b := begin(t, ctx, r, NewXID(r))
	execIn(t, ctx, b, insertSQL(2, 20))
	prepare(t, ctx, b)
	if err := b.Commit(ctx); err != nil {
		t.Fatalf("Commit of a writing branch after the read-only ones: %v", err)
	}
	closeBranch(t, b)
	wantRow(t, r, 2, "writing branch after the read-only ones")
}

// TestStatementsAfterEnd checks that once a branch is prepared,
// committed, rolled back or closed, its query methods fail without
// running anything, QueryRowContext (through Row.Err and Row.Scan) as
// ExecContext does: a statement run then would autocommit outside the
// distributed transaction.
func TestStatementsAfterEnd(t *testing.T, target Target) {
	ctx := timeoutContext(t, testTimeout)
	r := newResource(t, target, "rt_after")
	createItems(t, r)
	ends := []struct {
		name string
		end  func(t *testing.T, b resource.Branch)
	}{
		{"Prepared", func(t *testing.T, b resource.Branch) { prepare(t, ctx, b) }},
		{"Committed", func(t *testing.T, b resource.Branch) {
			prepare(t, ctx, b)
			if err := b.Commit(ctx); err != nil {
				t.Fatalf("Commit: %v", err)
			}
		}},
		{"CommittedOnePhase", func(t *testing.T, b resource.Branch) {
			if err := b.CommitOnePhase(ctx); err != nil {
				t.Fatalf("CommitOnePhase: %v", err)
			}
		}},
		{"RolledBack", func(t *testing.T, b resource.Branch) {
			if err := b.Rollback(ctx); err != nil {
				t.Fatalf("Rollback: %v", err)
			}
		}},
		{"Closed", func(t *testing.T, b resource.Branch) { closeBranch(t, b) }},
	}
	for i, tc := range ends {
		t.Run(tc.name, func(t *testing.T) {
			id := 10 * (i + 1)
			b := begin(t, ctx, r, NewXID(r))
			defer closeBranch(t, b)
			execIn(t, ctx, b, insertSQL(id, 1))
			tc.end(t, b)

			_, execErr := b.ExecContext(ctx, insertSQL(id+1, 2))
			if execErr == nil {
				t.Fatalf("ExecContext on a branch %s: no error", tc.name)
			}
			if rows, err := b.QueryContext(ctx, "SELECT id FROM rt_items"); err == nil {
				_ = rows.Close()
				t.Errorf("QueryContext on a branch %s: no error", tc.name)
			}
			row := b.QueryRowContext(ctx, insertSQL(id+2, 3))
			rowErr := row.Err()
			var x int
			scanErr := row.Scan(&x)
			switch {
			case rowErr == nil || scanErr == nil:
				t.Errorf("QueryRowContext on a branch %s: Row.Err %v, Row.Scan %v; want both to fail", tc.name, rowErr, scanErr)
			case rowErr.Error() != execErr.Error() || scanErr.Error() != execErr.Error():
				t.Errorf("QueryRowContext on a branch %s: Row.Err %q, Row.Scan %q; want ExecContext's error %q", tc.name, rowErr, scanErr, execErr)
			}
			if tc.name == "Prepared" {
				if err := b.Rollback(ctx); err != nil {
					t.Errorf("Rollback of the prepared branch: %v", err)
				}
			}
			wantNoRow(t, r, id+1, "ExecContext after the branch's end")
			wantNoRow(t, r, id+2, "QueryRowContext after the branch's end")
		})
	}
}
