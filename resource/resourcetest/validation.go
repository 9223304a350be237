package resourcetest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/threepc/threepc/resource"
)

// TestValidation checks that Begin, CommitPrepared and RollbackPrepared
// refuse malformed ids and ids of other resources before touching the
// database.
func TestValidation(t *testing.T, target Target) {
	ctx := timeoutContext(t, testTimeout)
	r := newResource(t, target, "rt_valid")
	gtid := NewGTID()
	space := resource.SpaceTag("")
	invalid := []error{resource.ErrInvalidName, resource.ErrInvalidID}
	for _, tc := range []struct {
		name   string
		xid    resource.XID
		want   []error
		byIDOK bool // CommitPrepared may accept it: the id itself is well-formed
	}{
		{"BranchOfAnotherResource", resource.XID{GTID: gtid, Primary: r.Name(), Branch: "someone_else", Space: space}, invalid, true},
		{"MalformedGTID", resource.XID{GTID: "not-a-gtid", Primary: r.Name(), Branch: r.Name(), Space: space}, []error{resource.ErrInvalidID}, false},
		{"GTIDWithQuote", resource.XID{GTID: gtid[:25] + "'", Primary: r.Name(), Branch: r.Name(), Space: space}, []error{resource.ErrInvalidID}, false},
		{"PrimaryTooLong", resource.XID{GTID: gtid, Primary: strings.Repeat("p", resource.MaxNameLen+1), Branch: r.Name(), Space: space}, []error{resource.ErrInvalidName}, false},
		{"PrimaryWithQuote", resource.XID{GTID: gtid, Primary: "a'b", Branch: r.Name(), Space: space}, []error{resource.ErrInvalidName}, false},
		{"EmptyPrimary", resource.XID{GTID: gtid, Branch: r.Name(), Space: space}, []error{resource.ErrInvalidName}, false},
		{"NoNamespace", resource.XID{GTID: gtid, Primary: r.Name(), Branch: r.Name()}, []error{resource.ErrInvalidID}, false},
		{"NamespaceWithQuote", resource.XID{GTID: gtid, Primary: r.Name(), Branch: r.Name(), Space: space[:7] + "'"}, []error{resource.ErrInvalidID}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := r.Begin(ctx, tc.xid)
			if err == nil {
				if b != nil {
					_ = b.Rollback(ctx)
					_ = b.Close()
				}
				t.Fatalf("Begin(%+v): no error", tc.xid)
			}
			if !isAny(err, tc.want) {
				t.Errorf("Begin(%+v): %v, want an error wrapping one of %v", tc.xid, err, tc.want)
			}
			if tc.byIDOK {
				return
			}
			if err := r.CommitPrepared(ctx, tc.xid); !isAny(err, tc.want) {
				t.Errorf("CommitPrepared(%+v): %v, want an error wrapping one of %v", tc.xid, err, tc.want)
			}
			if err := r.RollbackPrepared(ctx, tc.xid); !isAny(err, tc.want) {
				t.Errorf("RollbackPrepared(%+v): %v, want an error wrapping one of %v", tc.xid, err, tc.want)
			}
		})
	}
	if st := resource.DBOf(r).Stats(); st.InUse != 0 {
		t.Errorf("after refused Begins: %d connections in use, want 0", st.InUse)
	}
	wantPrepared(t, ctx, r, "after refused Begins")
}

// TestContext checks cancelled contexts and a deadline that ends during
// Prepare.
func TestContext(t *testing.T, target Target) {
	ctx := timeoutContext(t, testTimeout)
	r := newResource(t, target, "rt_context")
	createItems(t, r)
	cancelled, cancel := context.WithCancel(ctx)
	cancel()

	t.Run("Cancelled", func(t *testing.T) {
		b := begin(t, ctx, r, NewXID(r))
		execIn(t, ctx, b, insertSQL(1, 10))
		if _, err := b.ExecContext(cancelled, insertSQL(2, 20)); err == nil {
			t.Errorf("exec with a cancelled context: no error")
		}
		vote, err := b.Prepare(cancelled)
		t.Logf("Prepare with a cancelled context: %v, %v", vote, err)
		wantGone(t, b.Rollback(ctx), "Rollback after Prepare with a cancelled context")
		closeBranch(t, b)
		wantPrepared(t, ctx, r, "after Prepare with a cancelled context, Rollback and Close")
		wantNoRow(t, r, 1, "branch rolled back")
		wantNoRow(t, r, 2, "statement with a cancelled context")
	})

	// Deadlines that may expire while PREPARE is in flight: whatever the
	// server did, Rollback and Close must leave nothing prepared.
	t.Run("DeadlineDuringPrepare", func(t *testing.T) {
		var deadlines []time.Duration
		for range 3 {
			for _, us := range []int{1, 20, 50, 100, 150, 200, 300, 500, 1000, 2000, 5000} {
				deadlines = append(deadlines, time.Duration(us)*time.Microsecond)
			}
		}
		for i, d := range deadlines {
			b := begin(t, ctx, r, NewXID(r))
			execIn(t, ctx, b, insertSQL(10+i, 1))
			dctx, cancel := context.WithTimeout(ctx, d)
			vote, err := b.Prepare(dctx)
			cancel()
			rerr := b.Rollback(ctx)
			t.Logf("deadline %v: Prepare = %v, %v; Rollback: %v", d, vote, err, rerr)
			closeBranch(t, b)
		}
		wantPrepared(t, ctx, r, "after Prepares with short deadlines, Rollback and Close")
		for i := range deadlines {
			wantNoRow(t, r, 10+i, "branch rolled back after a Prepare with a short deadline")
		}
	})
}

// TestCheck checks Resource.Check on a migrated database and the System
// name.
func TestCheck(t *testing.T, target Target) {
	ctx := timeoutContext(t, testTimeout)
	r := newResource(t, target, "rt_check")
	if err := r.Check(ctx); err != nil {
		t.Errorf("Check on a migrated database: %v", err)
	}
	if s := r.System(); s != "postgresql" && s != "mysql" && s != "mariadb" {
		t.Errorf("System() = %q, want postgresql, mysql or mariadb", s)
	}
}
