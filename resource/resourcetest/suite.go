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

// Run is the conformance suite: every driver must pass it against a real
// server, killable and restartable (crash survival is part of
// conformance). Each subtest gets resources of its own from target.New.
// The subtests run one after another: one of them kills the server.
//
// The suite uses only the resource interfaces and portable SQL on a table
// rt_items it creates in each subtest's database.
func Run(t *testing.T, target Target) {
	if target.New == nil {
		t.Fatal("resourcetest: Target.New is nil")
	}
	tests := []struct {
		name string
		f    func(*testing.T, Target)
	}{
		{"PrepareCommit", testPrepareCommit},
		{"PrepareRollback", testPrepareRollback},
		{"Unprepared", testUnprepared},
		{"SurvivesDisconnect", testSurvivesDisconnect},
		{"RecoverListsOwnBranchesOnly", testRecoverOwnOnly},
		{"FinishedBranches", testFinishedBranches},
		{"Markers", testMarkers},
		{"FailedBranchRefusesPrepare", testFailedBranch},
		{"ReadOnlyBranch", testReadOnly},
		{"PoolHygiene", testPoolHygiene},
		{"Validation", testValidation},
		{"Context", testContexts},
		{"AbandonBlockedBranch", testAbandon},
		{"Check", testCheck},
		{"CommitWithMarker", testCommitWithMarker},
		{"Evidence", testEvidence},
		{"Tombstone", testTombstone},
		{"OutsideRollbackIsHeuristic", testOutsideRollback},
		// Last: it kills the server, and a failure half-way could leave it
		// down for the subtests after it.
		{"SurvivesServerCrash", testSurvivesCrash},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.f(t, target) })
	}
}

// testTimeout bounds one subtest; the crash test gets more.
const testTimeout = 2 * time.Minute

func timeoutContext(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

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
		if err := r.Close(); err != nil {
			t.Errorf("close resource %s: %v", name, err)
		}
	})
}

// createItems creates the table every subtest writes to.
func createItems(t *testing.T, r resource.Resource) {
	t.Helper()
	MustExec(t, r.DB(), "CREATE TABLE rt_items (id INT PRIMARY KEY, v INT NOT NULL)")
}

func insertSQL(id, v int) string {
	return fmt.Sprintf("INSERT INTO rt_items (id, v) VALUES (%d, %d)", id, v)
}

// rowCount counts the committed rows with the given id, from a pool
// connection (outside any branch).
func rowCount(t *testing.T, r resource.Resource, id int) int64 {
	t.Helper()
	return CountRows(t, r.DB(), "rt_items", fmt.Sprintf("id = %d", id))
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

// 1.
func testPrepareCommit(t *testing.T, target Target) {
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
	if v := QueryInt(t, r.DB(), "SELECT v FROM rt_items WHERE id = 1"); v != 10 {
		t.Errorf("after Commit: v = %d, want 10", v)
	}
	wantPrepared(t, ctx, r, "after Commit")
}

// 2.
func testPrepareRollback(t *testing.T, target Target) {
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

// 3.
func testUnprepared(t *testing.T, target Target) {
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

// 4.
func testSurvivesDisconnect(t *testing.T, target Target) {
	ctx := timeoutContext(t, testTimeout)
	r := newResource(t, target, "rt_disconnect")
	createItems(t, r)

	b := begin(t, ctx, r, NewXID(r))
	xid := b.XID()
	execIn(t, ctx, b, insertSQL(1, 10))
	prepare(t, ctx, b)
	closeBranch(t, b)
	wantNoRow(t, r, 1, "prepared branch whose connection was closed")
	wantPrepared(t, ctx, r, "prepared branch whose connection was closed", xid)
	wantCommitted(t, ctx, r, xid, false, "prepared branch whose connection was closed")

	// nil from CommitPrepared is a proven commit: the effect and the
	// evidence are there.
	if err := byID(ctx, r.CommitPrepared, xid); err != nil {
		t.Fatalf("CommitPrepared(%s) from a new connection, after the branch's connection was closed: %v", xid, err)
	}
	wantRow(t, r, 1, "after CommitPrepared")
	wantCommitted(t, ctx, r, xid, true, "after CommitPrepared")
	wantPrepared(t, ctx, r, "after CommitPrepared")
}

// 5.
func testSurvivesCrash(t *testing.T, target Target) {
	if target.Kill == nil || target.Restart == nil {
		t.Fatal("Target.Kill or Target.Restart is nil: surviving a server crash (SIGKILL and restart) with prepared branches intact is part of conformance; run the suite on a server the target can kill and restart (package harness)")
	}
	ctx := timeoutContext(t, 4*time.Minute)
	r := newResource(t, target, "rt_crash")
	createItems(t, r)

	b1 := begin(t, ctx, r, NewXID(r))
	commitXID := b1.XID()
	execIn(t, ctx, b1, insertSQL(1, 10))
	prepare(t, ctx, b1)
	b2 := begin(t, ctx, r, NewXID(r))
	rollbackXID := b2.XID()
	execIn(t, ctx, b2, insertSQL(2, 20))
	prepare(t, ctx, b2)
	closeBranch(t, b1)
	closeBranch(t, b2)
	marker := resource.Marker{
		GTID: commitXID.GTID, State: resource.StatePreCommit,
		Primary: r.Name(), Participants: []string{r.Name()}, Owner: "resourcetest",
	}
	if err := r.InsertMarker(ctx, marker); err != nil {
		t.Fatalf("InsertMarker: %v", err)
	}
	wantPrepared(t, ctx, r, "before the crash", commitXID, rollbackXID)

	target.Kill(t)
	target.Restart(t)
	WaitReachable(t, r.DB(), time.Minute)

	wantPrepared(t, ctx, r, "after SIGKILL and restart", commitXID, rollbackXID)
	got, err := readMarker(ctx, r, marker.GTID)
	if err != nil {
		t.Errorf("ReadMarker after SIGKILL and restart: %v", err)
	} else if got.State != resource.StatePreCommit {
		t.Errorf("marker after restart: state %q, want %q", got.State, resource.StatePreCommit)
	}

	err = RetryUnreachable(30*time.Second, func() error { return byID(ctx, r.CommitPrepared, commitXID) })
	if err != nil {
		t.Fatalf("CommitPrepared after restart: %v", err)
	}
	err = RetryUnreachable(30*time.Second, func() error { return byID(ctx, r.RollbackPrepared, rollbackXID) })
	if err != nil {
		t.Fatalf("RollbackPrepared after restart: %v", err)
	}
	wantRow(t, r, 1, "committed by id after the restart")
	wantCommitted(t, ctx, r, commitXID, true, "committed by id after the restart")
	wantNoRow(t, r, 2, "rolled back by id after the restart")
	wantCommitted(t, ctx, r, rollbackXID, false, "rolled back by id after the restart")
	wantPrepared(t, ctx, r, "after finishing both branches")
}

func readMarker(ctx context.Context, r resource.Resource, gtid string) (m resource.Marker, err error) {
	err = RetryUnreachable(30*time.Second, func() error {
		m, err = r.ReadMarker(ctx, gtid)
		return err
	})
	return m, err
}

// 6.
func testRecoverOwnOnly(t *testing.T, target Target) {
	if target.PrepareForeign == nil || target.NewOnDatabaseOf == nil {
		t.Fatal("Target.PrepareForeign or Target.NewOnDatabaseOf is nil: listing only this resource's branches, next to other software's prepared transactions and other resources' branches on the same database, is part of conformance")
	}
	ctx := timeoutContext(t, testTimeout)
	r := newResource(t, target, "rt_list")
	createItems(t, r)
	otherName := uniqueName("rt_list_other")
	other := target.NewOnDatabaseOf(t, r, otherName)
	if other == nil {
		t.Fatalf("Target.NewOnDatabaseOf returned nil")
	}
	registerResource(t, other, otherName)

	finishForeign := target.PrepareForeign(t, r)
	if finishForeign == nil {
		t.Fatal("Target.PrepareForeign returned a nil finish function")
	}
	finished := false
	t.Cleanup(func() {
		if !finished {
			finishForeign()
		}
	})

	// One global transaction with a branch on each resource, both on the
	// same database: only the branch's own name tells them apart.
	gtid := NewGTID()
	space := resource.SpaceTag("")
	b := begin(t, ctx, r, resource.XID{GTID: gtid, Primary: r.Name(), Branch: r.Name(), Space: space})
	mine := b.XID()
	execIn(t, ctx, b, insertSQL(1, 10))
	prepare(t, ctx, b)
	ob := begin(t, ctx, other, resource.XID{GTID: gtid, Primary: r.Name(), Branch: other.Name(), Space: space})
	theirs := ob.XID()
	execIn(t, ctx, ob, insertSQL(2, 20))
	prepare(t, ctx, ob)
	// Another deployment's branch of this resource: Recover lists every
	// namespace, recovery keeps its own.
	nb := begin(t, ctx, r, resource.XID{GTID: NewGTID(), Primary: r.Name(), Branch: r.Name(), Space: resource.SpaceTag("resourcetest-other")})
	elsewhere := nb.XID()
	execIn(t, ctx, nb, insertSQL(3, 30))
	prepare(t, ctx, nb)

	wantPrepared(t, ctx, r, "a foreign prepared transaction, another resource's branch on the same database and a branch of another namespace", mine, elsewhere)
	wantPrepared(t, ctx, other, "the other resource on the same database", theirs)
	for _, x := range recovered(t, ctx, r) {
		if x.SameBranch(elsewhere) && x.Space != elsewhere.Space {
			t.Errorf("Recover: %s has namespace tag %q, want %q", x, x.Space, elsewhere.Space)
		}
	}

	if err := nb.Rollback(ctx); err != nil {
		t.Fatalf("Rollback of the other namespace's branch: %v", err)
	}
	closeBranch(t, nb)
	if err := b.Commit(ctx); err != nil {
		t.Fatalf("Commit on %s: %v", r.Name(), err)
	}
	if err := ob.Rollback(ctx); err != nil {
		t.Fatalf("Rollback on %s: %v", other.Name(), err)
	}
	closeBranch(t, b)
	closeBranch(t, ob)
	finishForeign()
	finished = true

	wantRow(t, r, 1, "committed branch")
	wantNoRow(t, r, 2, "the other resource's rolled back branch")
	wantNoRow(t, r, 3, "the other namespace's rolled back branch")
	// Evidence is per branch: the other resource's branch of the same
	// gtid left none.
	wantCommitted(t, ctx, r, mine, true, "committed branch")
	wantCommitted(t, ctx, other, theirs, false, "the other resource's rolled back branch of the same gtid")
	wantPrepared(t, ctx, r, "after finishing everything")
	wantPrepared(t, ctx, other, "after finishing everything")
}

// 7.
//
// A branch that is not prepared (never was, or is finished) proves
// nothing by its absence: a commit of it is nil only with its evidence,
// else ErrHeuristic; a rollback of it is ErrUnknownBranch, or
// ErrHeuristic when it committed.
func testFinishedBranches(t *testing.T, target Target) {
	ctx := timeoutContext(t, testTimeout)
	r := newResource(t, target, "rt_finished")
	createItems(t, r)

	t.Run("NeverPrepared", func(t *testing.T) {
		xid := NewXID(r)
		wantHeuristic(t, r.CommitPrepared(ctx, xid), "CommitPrepared of an id never used")
		wantUnknown(t, r.RollbackPrepared(ctx, xid), "RollbackPrepared of an id never used")

		// An active branch is not a prepared one, whatever its id: a
		// commit by id must neither commit it nor claim it committed.
		b := begin(t, ctx, r, NewXID(r))
		execIn(t, ctx, b, insertSQL(1, 10))
		err := r.CommitPrepared(ctx, b.XID())
		if err == nil || !errors.Is(err, resource.ErrHeuristic) && !errors.Is(err, resource.ErrBranchBusy) {
			t.Errorf("CommitPrepared of an active branch: %v, want an error wrapping ErrHeuristic or ErrBranchBusy", err)
		}
		if err := b.Rollback(ctx); err != nil && !errors.Is(err, resource.ErrUnknownBranch) {
			t.Errorf("Rollback of the active branch: %v", err)
		}
		closeBranch(t, b)
		wantNoRow(t, r, 1, "active branch rolled back")
		wantPrepared(t, ctx, r, "after NeverPrepared")
	})

	t.Run("AlreadyCommitted", func(t *testing.T) {
		b := begin(t, ctx, r, NewXID(r))
		xid := b.XID()
		execIn(t, ctx, b, insertSQL(2, 20))
		prepare(t, ctx, b)
		closeBranch(t, b)
		if err := byID(ctx, r.CommitPrepared, xid); err != nil {
			t.Fatalf("CommitPrepared: %v", err)
		}
		// Someone committed it (the evidence says so): committing again
		// is fine, rolling back contradicts it.
		if err := r.CommitPrepared(ctx, xid); err != nil {
			t.Errorf("CommitPrepared of a committed branch: %v, want nil (its evidence is there)", err)
		}
		wantHeuristic(t, r.RollbackPrepared(ctx, xid), "RollbackPrepared of a committed branch")
		wantRow(t, r, 2, "committed branch")
		wantPrepared(t, ctx, r, "after AlreadyCommitted")
	})

	t.Run("AlreadyRolledBack", func(t *testing.T) {
		b := begin(t, ctx, r, NewXID(r))
		xid := b.XID()
		execIn(t, ctx, b, insertSQL(3, 30))
		prepare(t, ctx, b)
		closeBranch(t, b)
		if err := byID(ctx, r.RollbackPrepared, xid); err != nil {
			t.Fatalf("RollbackPrepared: %v", err)
		}
		wantHeuristic(t, r.CommitPrepared(ctx, xid), "CommitPrepared of a rolled back branch")
		wantUnknown(t, r.RollbackPrepared(ctx, xid), "RollbackPrepared of a rolled back branch")
		wantNoRow(t, r, 3, "rolled back branch")
		wantPrepared(t, ctx, r, "after AlreadyRolledBack")
	})

	// Recovery finishes the branches of a stalled coordinator while the
	// coordinator may still hold them open. A driver may take the branch
	// over (PostgreSQL: a prepared transaction belongs to no session;
	// MariaDB: end the holding session, wait until the engine has the
	// transaction) or refuse with ErrBranchBusy. Either way, nil means
	// done and proven, and the coordinator's own Commit or Rollback
	// afterwards must tell the truth: the branch's Commit after a
	// rollback by id is ErrHeuristic, never nil. ErrUnknownBranch for a
	// branch that Recover lists as prepared never conforms: recovery
	// reads it as "already finished".
	for _, tc := range []struct {
		name   string
		commit bool
		id     int
	}{
		{"CommittedElsewhereWhileOpen", true, 4},
		{"RolledBackElsewhereWhileOpen", false, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			finish, verb := r.RollbackPrepared, "RollbackPrepared"
			if tc.commit {
				finish, verb = r.CommitPrepared, "CommitPrepared"
			}
			b := begin(t, ctx, r, NewXID(r))
			xid := b.XID()
			execIn(t, ctx, b, insertSQL(tc.id, 1))
			prepare(t, ctx, b)
			wantPrepared(t, ctx, r, "prepared and still open", xid)
			err := finish(ctx, xid)
			switch {
			case err == nil && tc.commit:
				wantRow(t, r, tc.id, verb+" by id answered nil")
				wantCommitted(t, ctx, r, xid, true, verb+" by id answered nil")
				if err := b.Commit(ctx); err != nil {
					t.Errorf("Branch.Commit after %s by id elsewhere: %v, want nil (the evidence is there)", verb, err)
				}
				closeBranch(t, b)
			case err == nil:
				wantHeuristic(t, b.Commit(ctx), "Branch.Commit after "+verb+" by id elsewhere")
				wantGone(t, b.Rollback(ctx), "Branch.Rollback after "+verb+" by id elsewhere")
				closeBranch(t, b)
			case errors.Is(err, resource.ErrBranchBusy):
				t.Logf("%s while the branch is open: %v (the driver refuses to take over a branch held by a live session)", verb, err)
				wantPrepared(t, ctx, r, "after a busy "+verb, xid)
				closeBranch(t, b)
				if err := byID(ctx, finish, xid); err != nil {
					t.Fatalf("%s after the branch was closed: %v", verb, err)
				}
			case errors.Is(err, resource.ErrUnknownBranch):
				t.Fatalf("%s(%s) while the branch is open: %v; but Recover lists it as prepared, and recovery would take ErrUnknownBranch for \"already finished\" (take the branch over, or report ErrBranchBusy)", verb, xid, err)
			default:
				t.Fatalf("%s(%s) while the branch is open: %v, want nil or ErrBranchBusy", verb, xid, err)
			}
			if tc.commit {
				wantRow(t, r, tc.id, "committed by id")
				wantCommitted(t, ctx, r, xid, true, "committed by id")
			} else {
				wantNoRow(t, r, tc.id, "rolled back by id")
				wantCommitted(t, ctx, r, xid, false, "rolled back by id")
			}
			wantPrepared(t, ctx, r, "after "+tc.name)
		})
	}

	t.Run("Distinguishable", func(t *testing.T) {
		err := r.CommitPrepared(ctx, NewXID(r))
		if errors.Is(err, resource.ErrInvalidID) || errors.Is(err, resource.ErrInvalidName) || resource.IsConnectionError(err) {
			t.Errorf("CommitPrepared of an unknown id: %v, which also matches another sentinel", err)
		}
		bad := resource.XID{GTID: "not-a-gtid", Primary: r.Name(), Branch: r.Name(), Space: resource.SpaceTag("")}
		err = r.CommitPrepared(ctx, bad)
		if !errors.Is(err, resource.ErrInvalidID) || errors.Is(err, resource.ErrUnknownBranch) || errors.Is(err, resource.ErrHeuristic) {
			t.Errorf("CommitPrepared of a malformed id: %v, want ErrInvalidID and neither ErrUnknownBranch nor ErrHeuristic", err)
		}
	})
}

// 8.
func testMarkers(t *testing.T, target Target) {
	ctx := timeoutContext(t, testTimeout)
	r := newResource(t, target, "rt_markers")

	participants := []string{r.Name(), "zz_other"}
	slices.Sort(participants)
	m := resource.Marker{
		GTID: NewGTID(), State: resource.StatePreCommit,
		Primary: r.Name(), Participants: participants, Owner: "instance-1",
		Space: resource.SpaceTag("resourcetest"),
	}
	if err := r.InsertMarker(ctx, m); err != nil {
		t.Fatalf("InsertMarker: %v", err)
	}
	stored, err := r.ReadMarker(ctx, m.GTID)
	if err != nil {
		t.Fatalf("ReadMarker: %v", err)
	}
	checkMarker(t, stored, m, "after InsertMarker")
	if age := time.Since(stored.CreatedAt); age < -time.Minute || age > time.Minute {
		t.Errorf("CreatedAt = %v, %v from now; want the database's clock at insert", stored.CreatedAt, age)
	}

	t.Run("CompareAndSet", func(t *testing.T) {
		for _, again := range []resource.Marker{
			m, // the same row again
			// The compare-and-set is on the gtid alone: deployments that
			// share the table never share a gtid.
			{GTID: m.GTID, State: resource.StateAbort, Primary: r.Name(), Participants: []string{r.Name()}, Owner: "recovery-2", Space: resource.SpaceTag("")},
		} {
			err := r.InsertMarker(ctx, again)
			if !errors.Is(err, resource.ErrMarkerExists) {
				t.Errorf("second InsertMarker(%s, %s): err = %v, want ErrMarkerExists", again.GTID, again.State, err)
			}
		}
		after, err := r.ReadMarker(ctx, m.GTID)
		if err != nil {
			t.Fatalf("ReadMarker: %v", err)
		}
		checkMarker(t, after, m, "after the refused inserts")
		if !after.CreatedAt.Equal(stored.CreatedAt) {
			t.Errorf("CreatedAt changed from %v to %v", stored.CreatedAt, after.CreatedAt)
		}
	})

	t.Run("Unknown", func(t *testing.T) {
		_, err := r.ReadMarker(ctx, NewGTID())
		if !errors.Is(err, resource.ErrNoMarker) {
			t.Errorf("ReadMarker of an unknown gtid: err = %v, want ErrNoMarker", err)
		}
	})

	t.Run("Invalid", func(t *testing.T) {
		bad := resource.Marker{GTID: NewGTID(), State: "maybe", Primary: r.Name(), Participants: []string{r.Name()}}
		if err := r.InsertMarker(ctx, bad); !errors.Is(err, resource.ErrInvalidID) {
			t.Errorf("InsertMarker with state %q: err = %v, want ErrInvalidID", bad.State, err)
		}
		badSpace := resource.Marker{GTID: bad.GTID, State: resource.StateAbort, Primary: r.Name(), Participants: []string{r.Name()}, Space: "x'"}
		if err := r.InsertMarker(ctx, badSpace); !errors.Is(err, resource.ErrInvalidID) {
			t.Errorf("InsertMarker with namespace tag %q: err = %v, want ErrInvalidID", badSpace.Space, err)
		}
		if _, err := r.ReadMarker(ctx, bad.GTID); !errors.Is(err, resource.ErrNoMarker) {
			t.Errorf("ReadMarker after an invalid insert: err = %v, want ErrNoMarker", err)
		}
	})

	t.Run("ListAndDelete", func(t *testing.T) {
		gtids := []string{NewGTID(), NewGTID(), NewGTID()}
		// Insert out of order: the list must come back in gtid order anyway.
		for _, i := range []int{2, 0, 1} {
			mk := resource.Marker{GTID: gtids[i], State: resource.StateAbort, Primary: r.Name(), Participants: []string{r.Name()}, Owner: "o"}
			if err := r.InsertMarker(ctx, mk); err != nil {
				t.Fatalf("InsertMarker: %v", err)
			}
		}
		all := append([]string{m.GTID}, gtids...)
		slices.Sort(all)
		wantMarkers(t, ctx, r, all)

		if err := r.DeleteMarkers(ctx, gtids[0], gtids[2]); err != nil {
			t.Fatalf("DeleteMarkers: %v", err)
		}
		if _, err := r.ReadMarker(ctx, gtids[0]); !errors.Is(err, resource.ErrNoMarker) {
			t.Errorf("ReadMarker of a deleted row: err = %v, want ErrNoMarker", err)
		}
		rest := []string{m.GTID, gtids[1]}
		slices.Sort(rest)
		wantMarkers(t, ctx, r, rest)
		if err := r.DeleteMarkers(ctx, gtids[0], gtids[2]); err != nil {
			t.Errorf("DeleteMarkers of deleted rows: %v, want nil", err)
		}
		if err := r.DeleteMarkers(ctx); err != nil {
			t.Errorf("DeleteMarkers with no gtids: %v, want nil", err)
		}
		wantMarkers(t, ctx, r, rest)
	})

	t.Run("Batch", func(t *testing.T) {
		mb, ok := r.(resource.MarkerBatcher)
		if !ok {
			t.Skipf("%T does not batch marker rows (optional)", r)
		}
		fenced := resource.Marker{GTID: NewGTID(), State: resource.StateAbort, Primary: r.Name(), Participants: []string{r.Name()}, Owner: "recovery"}
		if err := r.InsertMarker(ctx, fenced); err != nil {
			t.Fatalf("InsertMarker: %v", err)
		}
		row := func(state resource.MarkerState) resource.Marker {
			return resource.Marker{GTID: NewGTID(), State: state, Primary: r.Name(), Participants: participants, Owner: "batch", Space: resource.SpaceTag("resourcetest")}
		}
		fresh := []resource.Marker{row(resource.StatePreCommit), row(resource.StatePreCommit), row(resource.StateAbort)}
		late := fenced
		late.State, late.Owner = resource.StatePreCommit, "late-coordinator"
		batch := append(slices.Clone(fresh), m, late)
		states, err := mb.InsertMarkers(ctx, batch)
		if errors.Is(err, resource.ErrUnsupported) {
			t.Logf("InsertMarkers unsupported on this server: %v", err)
			for _, f := range fresh {
				if _, err := r.ReadMarker(ctx, f.GTID); !errors.Is(err, resource.ErrNoMarker) {
					t.Errorf("an unsupported InsertMarkers wrote %s: %v", f.GTID, err)
				}
			}
			return
		}
		if err != nil {
			t.Fatalf("InsertMarkers: %v", err)
		}
		want := []resource.MarkerState{resource.StatePreCommit, resource.StatePreCommit, resource.StateAbort, resource.StatePreCommit, resource.StateAbort}
		if !slices.Equal(states, want) {
			t.Errorf("InsertMarkers states = %v, want %v (a row already there keeps its state)", states, want)
		}
		for _, f := range fresh {
			got, err := r.ReadMarker(ctx, f.GTID)
			if err != nil {
				t.Fatalf("ReadMarker of a batched row: %v", err)
			}
			checkMarker(t, got, f, "after InsertMarkers")
		}
		for _, old := range []resource.Marker{m, fenced} {
			got, err := r.ReadMarker(ctx, old.GTID)
			if err != nil {
				t.Fatalf("ReadMarker: %v", err)
			}
			checkMarker(t, got, old, "a row already there, after InsertMarkers")
		}
		// A batch with an invalid row is refused whole.
		bad := []resource.Marker{row(resource.StatePreCommit), {GTID: NewGTID(), State: "maybe", Primary: r.Name(), Participants: []string{r.Name()}}}
		if _, err := mb.InsertMarkers(ctx, bad); !errors.Is(err, resource.ErrInvalidID) {
			t.Errorf("InsertMarkers with an invalid row: err = %v, want ErrInvalidID", err)
		}
		if _, err := r.ReadMarker(ctx, bad[0].GTID); !errors.Is(err, resource.ErrNoMarker) {
			t.Errorf("a refused batch wrote its valid row: %v", err)
		}
		// A batch racing single inserts of its gtids: each gtid ends with
		// exactly one row, and the batch reports the winner's state.
		race := []resource.Marker{row(resource.StatePreCommit), row(resource.StatePreCommit)}
		single := make(chan error, len(race))
		start := make(chan struct{})
		for _, rm := range race {
			go func() {
				<-start
				fence := rm
				fence.State, fence.Owner = resource.StateAbort, "fence"
				single <- r.InsertMarker(ctx, fence)
			}()
		}
		close(start)
		states, err = mb.InsertMarkers(ctx, race)
		if err != nil {
			t.Fatalf("InsertMarkers racing fences: %v", err)
		}
		for range race {
			if err := <-single; err != nil && !errors.Is(err, resource.ErrMarkerExists) {
				t.Errorf("fence racing a batch: %v", err)
			}
		}
		for i, rm := range race {
			got, err := r.ReadMarker(ctx, rm.GTID)
			if err != nil {
				t.Fatalf("ReadMarker: %v", err)
			}
			if got.State != states[i] {
				t.Errorf("batch said %s holds %s, the row is %s", rm.GTID, states[i], got.State)
			}
		}
	})

	t.Run("ConcurrentInsert", func(t *testing.T) {
		const n = 8
		gtid := NewGTID()
		errs := make(chan error, n)
		start := make(chan struct{})
		for i := range n {
			go func() {
				<-start
				errs <- r.InsertMarker(ctx, resource.Marker{
					GTID: gtid, State: resource.StatePreCommit, Primary: r.Name(),
					Participants: []string{r.Name()}, Owner: fmt.Sprintf("owner-%d", i),
				})
			}()
		}
		close(start)
		wins := 0
		for range n {
			err := <-errs
			switch {
			case err == nil:
				wins++
			case errors.Is(err, resource.ErrMarkerExists):
			default:
				t.Errorf("concurrent InsertMarker: %v, want nil or ErrMarkerExists", err)
			}
		}
		if wins != 1 {
			t.Errorf("concurrent InsertMarker of one gtid from %d goroutines: %d succeeded, want exactly 1", n, wins)
		}
		if _, err := r.ReadMarker(ctx, gtid); err != nil {
			t.Errorf("ReadMarker after the race: %v", err)
		}
	})
}

func checkMarker(t *testing.T, got, want resource.Marker, why string) {
	t.Helper()
	if got.GTID != want.GTID || got.State != want.State || got.Primary != want.Primary ||
		got.Owner != want.Owner || got.Space != want.Space || !slices.Equal(got.Participants, want.Participants) {
		t.Errorf("%s: ReadMarker = %+v, want %+v", why, got, want)
	}
	if got.CreatedAt.IsZero() {
		t.Errorf("%s: CreatedAt is zero", why)
	}
}

func wantMarkers(t *testing.T, ctx context.Context, r resource.Resource, gtids []string) {
	t.Helper()
	ms, err := r.ListMarkers(ctx)
	if err != nil {
		t.Fatalf("ListMarkers: %v", err)
	}
	got := make([]string, len(ms))
	for i, m := range ms {
		got[i] = m.GTID
	}
	if !slices.Equal(got, gtids) {
		t.Errorf("ListMarkers = %v, want %v (in gtid order)", got, gtids)
	}
}

// 9.
func testFailedBranch(t *testing.T, target Target) {
	ctx := timeoutContext(t, testTimeout)
	r := newResource(t, target, "rt_failed")
	createItems(t, r)
	MustExec(t, r.DB(), insertSQL(5, 50))

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
			if v := QueryInt(t, r.DB(), "SELECT v FROM rt_items WHERE id = 5"); v != 50 {
				t.Errorf("row 5: v = %d, want 50", v)
			}
		})
	}
}

// 10.
func testReadOnly(t *testing.T, target Target) {
	ctx := timeoutContext(t, testTimeout)
	r := newResource(t, target, "rt_readonly")
	createItems(t, r)
	MustExec(t, r.DB(), insertSQL(1, 10))

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

// checkPool checks that no connection is pinned any more and that every
// connection of the pool is clean: it holds more connections at once than
// the pool has, and on each runs SELECT 1 and an autocommit INSERT of row
// firstID+i. A connection handed back in a transaction would keep its
// insert uncommitted; one in an XA state would fail (MySQL 1399).
func checkPool(t *testing.T, ctx context.Context, r resource.Resource, firstID int) {
	t.Helper()
	db := r.DB()
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

// 11.
func testPoolHygiene(t *testing.T, target Target) {
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

// 12.
func testValidation(t *testing.T, target Target) {
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
	if st := r.DB().Stats(); st.InUse != 0 {
		t.Errorf("after refused Begins: %d connections in use, want 0", st.InUse)
	}
	wantPrepared(t, ctx, r, "after refused Begins")
}

func isAny(err error, targets []error) bool {
	for _, target := range targets {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}

// 13.
func testContexts(t *testing.T, target Target) {
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

// 14.
func testCheck(t *testing.T, target Target) {
	ctx := timeoutContext(t, testTimeout)
	r := newResource(t, target, "rt_check")
	if err := r.Check(ctx); err != nil {
		t.Errorf("Check on a migrated database: %v", err)
	}
	if s := r.System(); s != "postgresql" && s != "mysql" && s != "mariadb" {
		t.Errorf("System() = %q, want postgresql, mysql or mariadb", s)
	}
}

// Branch.Rollback from another goroutine must end a branch whose statement
// waits on a lock: that is how a transaction timeout breaks a distributed
// deadlock, which neither database can see.
func testAbandon(t *testing.T, target Target) {
	ctx := timeoutContext(t, testTimeout)
	r := newResource(t, target, "rt_abandon")
	createItems(t, r)
	MustExec(t, r.DB(), insertSQL(1, 10))

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
	if v := QueryInt(t, r.DB(), "SELECT v FROM rt_items WHERE id = 1"); v != 11 {
		t.Errorf("v = %d, want 11 (the holder's update)", v)
	}
	wantPrepared(t, ctx, r, "after abandoning a blocked branch")
	if st := r.DB().Stats(); st.InUse != 0 {
		t.Errorf("after abandoning a blocked branch: %d connections in use, want 0", st.InUse)
	}
}
