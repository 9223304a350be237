package resourcetest

import (
	"errors"
	"testing"

	"github.com/threepc/threepc/resource"
)

// TestSurvivesDisconnect checks that a prepared branch survives the close
// of its connection and is committed by id (Resource.CommitPrepared) from
// another one, with its evidence.
func TestSurvivesDisconnect(t *testing.T, target Target) {
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

// TestRecoverListsOwnBranchesOnly checks that Resource.Recover lists this
// resource's branches only, next to other software's prepared transactions
// (Target.PrepareForeign) and another resource's branches on the same
// database (Target.NewOnDatabaseOf); both are required.
func TestRecoverListsOwnBranchesOnly(t *testing.T, target Target) {
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

// TestFinishedBranches checks finishing branches that are not prepared
// (never were, or are finished): their absence proves nothing, so a commit
// of one is nil only with its evidence, else ErrHeuristic; a rollback of
// one is ErrUnknownBranch, or ErrHeuristic when it committed.
func TestFinishedBranches(t *testing.T, target Target) {
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
