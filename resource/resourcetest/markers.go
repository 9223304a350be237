package resourcetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/threepc/threepc/resource"
)

// TestMarkers checks the marker table: InsertMarker's compare-and-set,
// ReadMarker, ListMarkers and DeleteMarkers, validation, the optional
// resource.MarkerBatcher, and concurrent inserts of one gtid.
func TestMarkers(t *testing.T, target Target) {
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
