package resourcetest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/threepc/threepc/resource"
)

// uniqueName gives every resource of a run its own name: on MySQL, XA
// RECOVER is server-wide and the branch's resource name is what tells
// branches apart, so leftovers of an earlier run on an external server
// must not look like this run's.
func uniqueName(base string) string {
	const chars = "abcdefghijklmnopqrstuvwxyz0123456789"
	var b strings.Builder
	b.WriteString(base)
	b.WriteByte('_')
	for range 6 {
		b.WriteByte(chars[rand.IntN(len(chars))])
	}
	return b.String()
}

// newResource makes a resource on a database of its own and arranges for
// its prepared leftovers to be rolled back and for it to be closed.
func newResource(t *testing.T, target Target, base string) resource.Resource {
	t.Helper()
	if target.New == nil {
		t.Fatal("resourcetest: Target.New is nil")
	}
	name := uniqueName(base)
	r := target.New(t, name)
	if r == nil {
		t.Fatalf("Target.New(%q) returned nil", name)
	}
	registerResource(t, r, name)
	return r
}

func registerResource(t *testing.T, r resource.Resource, name string) {
	t.Helper()
	if got := r.Name(); got != name {
		t.Fatalf("Name() = %q, want %q", got, name)
	}
	t.Cleanup(func() {
		FinishAll(t, r)
		if err := resource.Close(r); err != nil {
			t.Errorf("close resource %s: %v", name, err)
		}
	})
}

// createItems creates the table every subtest writes to.
func createItems(t *testing.T, r resource.Resource) {
	t.Helper()
	MustExec(t, resource.DBOf(r), "CREATE TABLE rt_items (id INT PRIMARY KEY, v INT NOT NULL)")
}

func insertSQL(id, v int) string {
	return fmt.Sprintf("INSERT INTO rt_items (id, v) VALUES (%d, %d)", id, v)
}

// rowCount counts the committed rows with the given id, from a pool
// connection (outside any branch).
func rowCount(t *testing.T, r resource.Resource, id int) int64 {
	t.Helper()
	return CountRows(t, resource.DBOf(r), "rt_items", fmt.Sprintf("id = %d", id))
}

func wantRow(t *testing.T, r resource.Resource, id int, why string) {
	t.Helper()
	if n := rowCount(t, r, id); n != 1 {
		t.Errorf("%s: row %d: found %d rows, want 1", why, id, n)
	}
}

func wantNoRow(t *testing.T, r resource.Resource, id int, why string) {
	t.Helper()
	if n := rowCount(t, r, id); n != 0 {
		t.Errorf("%s: row %d: found %d rows, want none", why, id, n)
	}
}

// begin starts a branch, checks its id and closes it at the end of the
// test whatever happens.
func begin(t *testing.T, ctx context.Context, r resource.Resource, xid resource.XID) resource.Branch {
	t.Helper()
	b, err := r.Begin(ctx, xid)
	if err != nil {
		t.Fatalf("Begin(%s): %v", xid, err)
	}
	if b == nil {
		t.Fatalf("Begin(%s) returned a nil branch and no error", xid)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Logf("cleanup: close branch %s: %v", xid, err)
		}
		if t.Failed() {
			// Keep one failure from cascading into the next subtests
			// of the same resource.
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			_ = byID(ctx, r.RollbackPrepared, b.XID())
		}
	})
	// The driver may record its session in the id (MySQL); nothing else
	// may change. Callers use b.XID() from here on.
	if got := b.XID(); !got.SameBranch(xid) {
		t.Errorf("XID() = %+v, want the same branch as %+v", got, xid)
	} else if err := got.Validate(); err != nil {
		t.Errorf("XID() = %+v: %v", got, err)
	}
	return b
}

func execIn(t *testing.T, ctx context.Context, b resource.Branch, query string) {
	t.Helper()
	if _, err := b.ExecContext(ctx, query); err != nil {
		t.Fatalf("branch %s: exec %q: %v", b.XID(), query, err)
	}
}

// prepare prepares a branch that wrote something: anything but
// VotePrepared would lose the write.
func prepare(t *testing.T, ctx context.Context, b resource.Branch) {
	t.Helper()
	vote, err := b.Prepare(ctx)
	if err != nil {
		t.Fatalf("Prepare(%s): %v", b.XID(), err)
	}
	if vote != resource.VotePrepared {
		t.Fatalf("Prepare(%s) of a branch that wrote a row = %v, want %v", b.XID(), vote, resource.VotePrepared)
	}
}

func closeBranch(t *testing.T, b resource.Branch) {
	t.Helper()
	if err := b.Close(); err != nil {
		t.Errorf("Close(%s): %v", b.XID(), err)
	}
}

// recovered lists the XIDs that r.Recover returns, sorted by their string
// form, and checks the entries' metadata.
func recovered(t *testing.T, ctx context.Context, r resource.Resource) []resource.XID {
	t.Helper()
	var branches []resource.PreparedBranch
	err := RetryUnreachable(30*time.Second, func() (err error) {
		branches, err = r.Recover(ctx)
		return err
	})
	if err != nil {
		t.Fatalf("Recover on %s: %v", r.Name(), err)
	}
	xids := make([]resource.XID, 0, len(branches))
	for _, b := range branches {
		if !b.PreparedAt.IsZero() {
			if age := time.Since(b.PreparedAt); age < -time.Minute || age > time.Hour {
				t.Errorf("Recover: %s: PreparedAt %v is %v from now", b.XID, b.PreparedAt, age)
			}
		}
		xids = append(xids, b.XID)
	}
	slices.SortFunc(xids, func(a, b resource.XID) int { return strings.Compare(a.String(), b.String()) })
	return xids
}

// wantPrepared checks that r.Recover lists exactly the given branches.
func wantPrepared(t *testing.T, ctx context.Context, r resource.Resource, why string, want ...resource.XID) {
	t.Helper()
	got := recovered(t, ctx, r)
	want = slices.Clone(want)
	slices.SortFunc(want, func(a, b resource.XID) int { return strings.Compare(a.String(), b.String()) })
	if !slices.EqualFunc(got, want, resource.XID.SameBranch) {
		t.Errorf("%s: Recover on %s lists %v, want %v", why, r.Name(), got, want)
	}
}

// wantHeuristic checks that a commit of a branch gone without its evidence
// says so: nil would report a commit that did not happen, and
// ErrUnknownBranch alone would let a caller take it for "finished".
func wantHeuristic(t *testing.T, err error, what string) {
	t.Helper()
	if !errors.Is(err, resource.ErrHeuristic) {
		t.Errorf("%s: err = %v, want an error wrapping ErrHeuristic", what, err)
	}
}

// wantCommitted checks the evidence of a branch from a pool connection.
func wantCommitted(t *testing.T, ctx context.Context, r resource.Resource, xid resource.XID, want bool, why string) {
	t.Helper()
	var got bool
	err := RetryUnreachable(30*time.Second, func() (err error) {
		got, err = r.Committed(ctx, xid)
		return err
	})
	if err != nil {
		t.Errorf("%s: Committed(%s): %v", why, xid, err)
	} else if got != want {
		t.Errorf("%s: Committed(%s) = %v, want %v", why, xid, got, want)
	}
}

func wantUnknown(t *testing.T, err error, what string) {
	t.Helper()
	if !errors.Is(err, resource.ErrUnknownBranch) {
		t.Errorf("%s: err = %v, want an error wrapping ErrUnknownBranch", what, err)
	}
}

// wantGone accepts what Rollback may return for a branch that is already
// finished: nil, or ErrUnknownBranch when the driver cannot tell.
func wantGone(t *testing.T, err error, what string) {
	t.Helper()
	if err != nil && !errors.Is(err, resource.ErrUnknownBranch) {
		t.Errorf("%s: err = %v, want nil or an error wrapping ErrUnknownBranch", what, err)
	}
}

// byID runs CommitPrepared or RollbackPrepared, retrying while the
// driver says the branch is still busy: a branch whose connection was just
// closed may still be held by its session for a moment, and the contract
// allows ErrBranchBusy for that.
func byID(ctx context.Context, f func(context.Context, resource.XID) error, xid resource.XID) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := f(ctx, xid)
		if !errors.Is(err, resource.ErrBranchBusy) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func isAny(err error, targets []error) bool {
	for _, target := range targets {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}
