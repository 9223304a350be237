package resourcetest

import (
	"errors"
	"testing"
	"time"

	"github.com/threepc/threepc/resource"
)

// TestCommitWithMarker checks resource.MarkerCommitter, the optional
// ability behind the coordinator's logging-last-resource optimization
// (skipped when the driver's branches lack it): the branch's commit and
// its marker row are one atomic step, and the marker's primary key
// serialises that step against a fence.
func TestCommitWithMarker(t *testing.T, target Target) {
	ctx := timeoutContext(t, testTimeout)
	r := newResource(t, target, "rt_llr")
	probe, err := r.Begin(ctx, NewXID(r))
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	_, ok := probe.(resource.MarkerCommitter)
	_ = probe.Rollback(ctx)
	closeBranch(t, probe)
	if !ok {
		t.Skipf("the %s driver's branches do not implement resource.MarkerCommitter", r.System())
	}
	createItems(t, r)
	marker := func(state resource.MarkerState, owner string) resource.Marker {
		return resource.Marker{
			GTID: NewGTID(), State: state, Primary: r.Name(),
			Participants: []string{r.Name(), "zz_other"}, Owner: owner,
		}
	}
	// beginWriting starts a branch of gtid that wrote row id.
	beginWriting := func(t *testing.T, gtid string, id int) resource.Branch {
		t.Helper()
		b := begin(t, ctx, r, resource.XID{GTID: gtid, Primary: r.Name(), Branch: r.Name(), Space: resource.SpaceTag("")})
		execIn(t, ctx, b, insertSQL(id, id*10))
		return b
	}

	t.Run("Commit", func(t *testing.T) {
		m := marker(resource.StatePreCommit, "coordinator-1")
		b := beginWriting(t, m.GTID, 1)
		if _, err := r.ReadMarker(ctx, m.GTID); !errors.Is(err, resource.ErrNoMarker) {
			t.Errorf("ReadMarker before the commit: err = %v, want ErrNoMarker", err)
		}
		if err := b.(resource.MarkerCommitter).CommitWithMarker(ctx, m); err != nil {
			t.Fatalf("CommitWithMarker: %v", err)
		}
		closeBranch(t, b)
		wantRow(t, r, 1, "after CommitWithMarker")
		got, err := r.ReadMarker(ctx, m.GTID)
		if err != nil {
			t.Fatalf("ReadMarker after CommitWithMarker: %v", err)
		}
		checkMarker(t, got, m, "after CommitWithMarker")
		// The marker row proves the decision; the evidence row proves
		// this branch's commit, as for any other branch.
		wantCommitted(t, ctx, r, b.XID(), true, "after CommitWithMarker")
		wantPrepared(t, ctx, r, "after CommitWithMarker")
		if err := b.Rollback(ctx); err == nil {
			// Some drivers answer nil for any finished branch; then the
			// row must still be there.
			wantRow(t, r, 1, "after Rollback of a branch committed with its marker")
		}
	})

	t.Run("ExistingAbortRow", func(t *testing.T) {
		m := marker(resource.StatePreCommit, "coordinator-1")
		fence := m
		fence.State, fence.Owner = resource.StateAbort, "recovery-1"
		if err := r.InsertMarker(ctx, fence); err != nil {
			t.Fatalf("InsertMarker(abort): %v", err)
		}
		b := beginWriting(t, m.GTID, 2)
		err := b.(resource.MarkerCommitter).CommitWithMarker(ctx, m)
		if !errors.Is(err, resource.ErrMarkerExists) {
			t.Fatalf("CommitWithMarker over an abort row: err = %v, want ErrMarkerExists", err)
		}
		wantGone(t, b.Rollback(ctx), "Rollback after a refused CommitWithMarker")
		closeBranch(t, b)
		wantNoRow(t, r, 2, "written by a branch whose CommitWithMarker met an abort row")
		got, err := r.ReadMarker(ctx, m.GTID)
		if err != nil {
			t.Fatalf("ReadMarker: %v", err)
		}
		checkMarker(t, got, fence, "the abort row after the refused commit")
		wantCommitted(t, ctx, r, b.XID(), false, "after a refused CommitWithMarker")
		wantPrepared(t, ctx, r, "after a refused CommitWithMarker")
		checkPool(t, ctx, r, 100)
	})

	t.Run("FailedBranch", func(t *testing.T) {
		m := marker(resource.StatePreCommit, "coordinator-1")
		b := beginWriting(t, m.GTID, 3)
		if _, err := b.ExecContext(ctx, "INSERT INTO rt_no_such_table (id) VALUES (1)"); err == nil {
			t.Fatal("a bad statement inside the branch: no error")
		}
		err := b.(resource.MarkerCommitter).CommitWithMarker(ctx, m)
		if !errors.Is(err, resource.ErrPrepareRefused) || errors.Is(err, resource.ErrMarkerExists) {
			t.Errorf("CommitWithMarker after a failed statement: err = %v, want ErrPrepareRefused", err)
		}
		wantGone(t, b.Rollback(ctx), "Rollback after a refused CommitWithMarker")
		closeBranch(t, b)
		wantNoRow(t, r, 3, "written by a failed branch")
		if _, err := r.ReadMarker(ctx, m.GTID); !errors.Is(err, resource.ErrNoMarker) {
			t.Errorf("ReadMarker after a refused CommitWithMarker: err = %v, want ErrNoMarker", err)
		}
	})

	t.Run("RaceWithFence", func(t *testing.T) {
		// The fence of recovery and the coordinator's commit race for the
		// gtid's primary key: exactly one wins, and the branch's data is
		// committed exactly when the precommit row won.
		const rounds = 12
		wins := map[resource.MarkerState]int{}
		for i := range rounds {
			id := 1000 + i
			m := marker(resource.StatePreCommit, "coordinator-1")
			fence := m
			fence.State, fence.Owner = resource.StateAbort, "recovery-1"
			b := beginWriting(t, m.GTID, id)
			start := make(chan struct{})
			commitc, fencec := make(chan error, 1), make(chan error, 1)
			// Every third round lets the fence go first, every third the
			// commit, and the rest start together: both sides must win
			// some rounds, and the true races may go either way.
			delay := func(who int) {
				if i%3 == who {
					time.Sleep(20 * time.Millisecond)
				}
			}
			go func() {
				<-start
				delay(0)
				commitc <- b.(resource.MarkerCommitter).CommitWithMarker(ctx, m)
			}()
			go func() {
				<-start
				delay(1)
				fencec <- r.InsertMarker(ctx, fence)
			}()
			close(start)
			commitErr, fenceErr := <-commitc, <-fencec
			for _, e := range []error{commitErr, fenceErr} {
				if e != nil && !errors.Is(e, resource.ErrMarkerExists) {
					t.Fatalf("round %d: commit err = %v, fence err = %v; want nil or ErrMarkerExists", i, commitErr, fenceErr)
				}
			}
			if (commitErr == nil) == (fenceErr == nil) {
				t.Fatalf("round %d: commit err = %v, fence err = %v; want exactly one to win", i, commitErr, fenceErr)
			}
			if commitErr != nil {
				wantGone(t, b.Rollback(ctx), "Rollback after losing to the fence")
			}
			closeBranch(t, b)
			got, err := r.ReadMarker(ctx, m.GTID)
			if err != nil {
				t.Fatalf("round %d: ReadMarker: %v", i, err)
			}
			wins[got.State]++
			want := int64(0)
			if got.State == resource.StatePreCommit {
				want = 1
				if commitErr != nil {
					t.Errorf("round %d: the precommit row is in but CommitWithMarker failed: %v", i, commitErr)
				}
			}
			if n := rowCount(t, r, id); n != want {
				t.Errorf("round %d: marker %s, branch row found %d times, want %d", i, got.State, n, want)
			}
		}
		t.Logf("race winners over %d rounds: %v", rounds, wins)
		if wins[resource.StatePreCommit] == 0 || wins[resource.StateAbort] == 0 {
			t.Errorf("race winners over %d rounds: %v; want each side to win at least once (the race was not exercised)", rounds, wins)
		}
		wantPrepared(t, ctx, r, "after the races")
	})
}
