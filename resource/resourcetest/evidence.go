package resourcetest

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/threepc/threepc/resource"
)

// TestEvidence checks the evidence rows behind Resource.Committed: a
// branch's own row, written inside its transaction, is what lets anyone
// prove that a branch committed when no authoritative answer exists.
func TestEvidence(t *testing.T, target Target) {
	ctx := timeoutContext(t, testTimeout)
	r := newResource(t, target, "rt_evidence")
	createItems(t, r)
	// Read the evidence as another application instance would, on a pool
	// of its own.
	reader := r
	if target.NewOnDatabaseOf != nil {
		reader = target.NewOnDatabaseOf(t, r, r.Name())
		if reader == nil {
			t.Fatal("Target.NewOnDatabaseOf returned nil")
		}
		t.Cleanup(func() { _ = resource.Close(reader) })
	}

	t.Run("VisibleExactlyAfterCommit", func(t *testing.T) {
		b := begin(t, ctx, r, NewXID(r))
		xid := b.XID()
		execIn(t, ctx, b, insertSQL(1, 10))
		wantCommitted(t, ctx, reader, xid, false, "active branch")
		prepare(t, ctx, b)
		wantCommitted(t, ctx, reader, xid, false, "prepared branch")
		if err := b.Commit(ctx); err != nil {
			t.Fatalf("Commit: %v", err)
		}
		closeBranch(t, b)
		wantCommitted(t, ctx, reader, xid, true, "committed branch")
		// Evidence rows are not marker rows.
		if _, err := r.ReadMarker(ctx, xid.GTID); !errors.Is(err, resource.ErrNoMarker) {
			t.Errorf("ReadMarker of a gtid with only an evidence row: %v, want ErrNoMarker", err)
		}
		wantMarkers(t, ctx, r, []string{})
		if err := r.InsertMarker(ctx, resource.Marker{GTID: xid.GTID, State: resource.StatePreCommit, Primary: r.Name(), Participants: []string{r.Name()}, Owner: "o"}); err != nil {
			t.Errorf("InsertMarker beside an evidence row of the gtid: %v", err)
		}
		wantMarkers(t, ctx, r, []string{xid.GTID})

		rb := begin(t, ctx, r, NewXID(r))
		rxid := rb.XID()
		execIn(t, ctx, rb, insertSQL(2, 20))
		prepare(t, ctx, rb)
		if err := rb.Rollback(ctx); err != nil {
			t.Fatalf("Rollback: %v", err)
		}
		closeBranch(t, rb)
		wantCommitted(t, ctx, reader, rxid, false, "rolled back branch")

		if err := r.DeleteMarkers(ctx, xid.GTID); err != nil {
			t.Fatalf("DeleteMarkers: %v", err)
		}
	})

	t.Run("DeleteMarkersRemovesEvidence", func(t *testing.T) {
		var xids []resource.XID
		for i := range 2 {
			b := begin(t, ctx, r, NewXID(r))
			xids = append(xids, b.XID())
			execIn(t, ctx, b, insertSQL(10+i, 1))
			prepare(t, ctx, b)
			if err := b.Commit(ctx); err != nil {
				t.Fatalf("Commit: %v", err)
			}
			closeBranch(t, b)
			m := resource.Marker{GTID: b.XID().GTID, State: resource.StatePreCommit, Primary: r.Name(), Participants: []string{r.Name()}, Owner: "o"}
			if err := r.InsertMarker(ctx, m); err != nil {
				t.Fatalf("InsertMarker: %v", err)
			}
		}
		if err := r.DeleteMarkers(ctx, xids[0].GTID, NewGTID()); err != nil {
			t.Fatalf("DeleteMarkers: %v", err)
		}
		wantCommitted(t, ctx, reader, xids[0], false, "after DeleteMarkers of its gtid")
		if _, err := r.ReadMarker(ctx, xids[0].GTID); !errors.Is(err, resource.ErrNoMarker) {
			t.Errorf("ReadMarker after DeleteMarkers: %v, want ErrNoMarker", err)
		}
		wantCommitted(t, ctx, reader, xids[1], true, "another gtid's evidence after DeleteMarkers")
		wantMarkers(t, ctx, r, []string{xids[1].GTID})
		if err := r.DeleteMarkers(ctx, xids[1].GTID); err != nil {
			t.Fatalf("DeleteMarkers: %v", err)
		}
		wantCommitted(t, ctx, reader, xids[1], false, "after DeleteMarkers of its gtid")
		wantRow(t, r, 10, "data of a committed branch whose markers were deleted")
	})

	t.Run("MarkerAge", func(t *testing.T) {
		m := resource.Marker{GTID: NewGTID(), State: resource.StatePreCommit, Primary: r.Name(), Participants: []string{r.Name()}, Owner: "o"}
		if err := r.InsertMarker(ctx, m); err != nil {
			t.Fatalf("InsertMarker: %v", err)
		}
		first, err := r.ReadMarker(ctx, m.GTID)
		if err != nil {
			t.Fatalf("ReadMarker: %v", err)
		}
		if first.Age < 0 || first.Age > time.Minute {
			t.Errorf("Age of a fresh marker = %v, want between 0 and a minute", first.Age)
		}
		const pause = 300 * time.Millisecond
		time.Sleep(pause)
		second, err := r.ReadMarker(ctx, m.GTID)
		if err != nil {
			t.Fatalf("ReadMarker: %v", err)
		}
		if d := second.Age - first.Age; d < pause/2 || d > time.Minute {
			t.Errorf("Age went from %v to %v over a pause of %v: it does not follow the database's clock", first.Age, second.Age, pause)
		}
		list, err := r.ListMarkers(ctx)
		if err != nil {
			t.Fatalf("ListMarkers: %v", err)
		}
		i := slices.IndexFunc(list, func(x resource.Marker) bool { return x.GTID == m.GTID })
		if i < 0 {
			t.Fatalf("ListMarkers does not list %s", m.GTID)
		}
		if list[i].Age < second.Age || list[i].Age > second.Age+time.Minute {
			t.Errorf("ListMarkers: Age = %v after ReadMarker's %v", list[i].Age, second.Age)
		}
		if err := r.DeleteMarkers(ctx, m.GTID); err != nil {
			t.Fatal(err)
		}
	})
}

// TestTombstone checks Resource.Tombstone, the coordinator's clean-up at
// the primary: the precommit row becomes a committed tombstone that still
// blocks any insert (a late fence above all); other rows stay as they are.
func TestTombstone(t *testing.T, target Target) {
	ctx := timeoutContext(t, testTimeout)
	r := newResource(t, target, "rt_tombstone")
	createItems(t, r)

	// The precommit gtid also has a committed branch, so an evidence row.
	b := begin(t, ctx, r, NewXID(r))
	xid := b.XID()
	execIn(t, ctx, b, insertSQL(1, 10))
	prepare(t, ctx, b)
	if err := b.Commit(ctx); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	closeBranch(t, b)
	pre := resource.Marker{GTID: xid.GTID, State: resource.StatePreCommit, Primary: r.Name(), Participants: []string{r.Name(), "zz_other"}, Owner: "coordinator-1"}
	abort := resource.Marker{GTID: NewGTID(), State: resource.StateAbort, Primary: r.Name(), Participants: []string{r.Name()}, Owner: "recovery-1"}
	for _, m := range []resource.Marker{pre, abort} {
		if err := r.InsertMarker(ctx, m); err != nil {
			t.Fatalf("InsertMarker(%s): %v", m.State, err)
		}
	}
	missing := NewGTID()
	if err := r.Tombstone(ctx, pre.GTID, abort.GTID, missing); err != nil {
		t.Fatalf("Tombstone: %v", err)
	}
	tomb := pre
	tomb.State = resource.StateCommitted
	got, err := r.ReadMarker(ctx, pre.GTID)
	if err != nil {
		t.Fatalf("ReadMarker of the tombstone: %v", err)
	}
	checkMarker(t, got, tomb, "after Tombstone of a precommit row")
	got, err = r.ReadMarker(ctx, abort.GTID)
	if err != nil {
		t.Fatalf("ReadMarker of the abort row: %v", err)
	}
	checkMarker(t, got, abort, "after Tombstone of an abort row (left alone)")
	if _, err := r.ReadMarker(ctx, missing); !errors.Is(err, resource.ErrNoMarker) {
		t.Errorf("ReadMarker of a gtid without rows after Tombstone: %v, want ErrNoMarker (Tombstone creates nothing)", err)
	}
	wantCommitted(t, ctx, r, xid, true, "evidence after Tombstone of its gtid")
	all := []string{pre.GTID, abort.GTID}
	slices.Sort(all)
	wantMarkers(t, ctx, r, all)

	// The tombstone is a row: the compare-and-set still refuses a fence.
	fence := pre
	fence.State, fence.Owner = resource.StateAbort, "recovery-2"
	if err := r.InsertMarker(ctx, fence); !errors.Is(err, resource.ErrMarkerExists) {
		t.Errorf("InsertMarker(abort) over a tombstone: %v, want ErrMarkerExists", err)
	}
	if err := r.Tombstone(ctx, pre.GTID); err != nil {
		t.Errorf("Tombstone of a tombstone: %v, want nil", err)
	}
	if err := r.Tombstone(ctx); err != nil {
		t.Errorf("Tombstone with no gtids: %v, want nil", err)
	}
	got, err = r.ReadMarker(ctx, pre.GTID)
	if err != nil {
		t.Fatalf("ReadMarker: %v", err)
	}
	checkMarker(t, got, tomb, "after a second Tombstone")

	if err := r.DeleteMarkers(ctx, pre.GTID, abort.GTID); err != nil {
		t.Fatalf("DeleteMarkers: %v", err)
	}
	wantMarkers(t, ctx, r, []string{})
	wantCommitted(t, ctx, r, xid, false, "after DeleteMarkers of the tombstone's gtid")
}

// TestOutsideRollbackIsHeuristic checks a prepared branch rolled back
// behind threepc's back (Target.RollbackOutside, required) after the
// decision to commit: its commit, on the branch or by id, must report a
// heuristic outcome, never nil, the one answer that would be a lie.
func TestOutsideRollbackIsHeuristic(t *testing.T, target Target) {
	if target.RollbackOutside == nil {
		t.Fatal("Target.RollbackOutside is nil: reporting a branch rolled back outside threepc as a heuristic outcome (never as committed) is part of conformance")
	}
	ctx := timeoutContext(t, testTimeout)
	r := newResource(t, target, "rt_outside")
	createItems(t, r)

	for i, branchFirst := range []bool{true, false} {
		name := "ThenCommitPrepared"
		if branchFirst {
			name = "ThenBranchCommit"
		}
		t.Run(name, func(t *testing.T) {
			id := 1 + i
			b := begin(t, ctx, r, NewXID(r))
			xid := b.XID()
			execIn(t, ctx, b, insertSQL(id, 1))
			prepare(t, ctx, b)
			target.RollbackOutside(t, r, xid)
			wantPrepared(t, ctx, r, "after the outside rollback")

			branchCommit := func() { wantHeuristic(t, b.Commit(ctx), "Branch.Commit after an outside rollback") }
			byIDCommit := func() {
				wantHeuristic(t, byID(ctx, r.CommitPrepared, xid), "CommitPrepared after an outside rollback")
			}
			if branchFirst {
				branchCommit()
				byIDCommit()
			} else {
				byIDCommit()
				branchCommit()
			}
			wantUnknown(t, r.RollbackPrepared(ctx, xid), "RollbackPrepared after an outside rollback")
			wantGone(t, b.Rollback(ctx), "Branch.Rollback after an outside rollback")
			closeBranch(t, b)
			wantNoRow(t, r, id, "rolled back outside")
			wantCommitted(t, ctx, r, xid, false, "rolled back outside")
			wantPrepared(t, ctx, r, "at the end")
		})
	}
}
