package resourcetest

import (
	"context"
	"testing"
	"time"

	"github.com/threepc/threepc/resource"
)

// TestSurvivesServerCrash checks that prepared branches and marker rows
// survive a server crash (Target.Kill, SIGKILL, then Target.Restart) and
// are finished by id afterwards. It is skipped when Target.Kill is nil (an
// external server the target cannot kill); a Target with Kill must have
// Restart too.
func TestSurvivesServerCrash(t *testing.T, target Target) {
	if target.Kill == nil {
		t.Skip("resourcetest: Target.Kill is nil: crash survival (SIGKILL and restart with prepared branches intact) is NOT tested; it is part of conformance, so run the suite once on a server the target can kill and restart (package harness)")
	}
	if target.Restart == nil {
		t.Fatal("resourcetest: Target.Kill is set but Target.Restart is nil: the suite kills the server and needs it back")
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
	WaitReachable(t, resource.DBOf(r), time.Minute)

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
