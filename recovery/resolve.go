package recovery

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/threepc/threepc/internal/seeded"
	"github.com/threepc/threepc/internal/telemetry"
	"github.com/threepc/threepc/resource"
)

// hintOrphan is what an operator does about a decided branch gone without
// its evidence.
const hintOrphan = "marker rows kept. If the branch is on MariaDB, its server may hold it as an orphan " +
	"(prepared in InnoDB, not listed by XA RECOVER, holding its locks): restart that MariaDB server, then run " +
	"`threepc recover`, which commits it. Otherwise it was rolled back outside threepc (an operator's XA ROLLBACK or " +
	"ROLLBACK PREPARED): repair that branch's data by hand, then delete the gtid's rows from threepc_markers"

// resolve decides and acts on one transaction.
func (s *Scanner) resolve(ctx context.Context, t *TxReport, unreachable map[string]error, dry bool, fenceBy time.Time) {
	if t.Age < s.opts.horizon {
		t.Action, t.Reason = ActionWait, fmt.Sprintf("younger than the in-flight horizon (%v)", s.opts.horizon)
		return
	}
	row, atPrimary := t.Markers[t.Primary]
	decided := slices.ContainsFunc(slices.Collect(maps.Values(t.Markers)), func(m resource.Marker) bool {
		return m.State == resource.StatePreCommit
	})
	switch {
	case atPrimary && row.State == resource.StateCommitted:
		s.settled(ctx, t, unreachable, dry)
	case atPrimary && row.State == resource.StateAbort:
		if len(t.Branches) > 0 {
			t.Action, t.Reason = ActionRollback, "abort row at the primary"
			s.finish(ctx, t, false, dry)
		}
		s.collect(ctx, t, unreachable, dry)
	case decided:
		t.Action, t.Reason = ActionCommit, "precommit row found"
		s.finish(ctx, t, true, dry)
		s.complete(ctx, t, unreachable, dry)
	case len(t.Branches) == 0:
		// Rows that decide nothing (a non-primary row whose primary row
		// is gone): collected once old enough.
		s.collect(ctx, t, unreachable, dry)
	default:
		s.fence(ctx, t, unreachable, dry, fenceBy)
	}
}

// fence inserts the abort row at the primary, then acts on whichever row
// is there.
func (s *Scanner) fence(ctx context.Context, t *TxReport, unreachable map[string]error, dry bool, fenceBy time.Time) {
	primary, ok := s.res[t.Primary]
	if !ok {
		t.Action, t.Reason = ActionInDoubt, fmt.Sprintf("primary %q is not one of this scanner's resources", t.Primary)
		return
	}
	if err := unreachable[t.Primary]; err != nil {
		t.Action, t.Reason, t.Err = ActionInDoubt, fmt.Sprintf("primary %q unreachable and no precommit row on any reachable participant", t.Primary), err
		return
	}
	if dry {
		t.Action, t.Reason = ActionFence, "no marker row: would fence at the primary and roll back"
		return
	}
	if seeded.AbortWithoutFence.Load() {
		t.Action, t.Reason = ActionFence, "seeded bug: abort without fence"
		s.finish(ctx, t, false, dry)
		return
	}
	// A scan that has run this long may be acting on markers read before
	// a decision whose row could, in principle, be collected by now: it
	// does not fence. The next scan reads afresh.
	if !s.opts.clock.Now().Before(fenceBy) && !seeded.FenceWithoutDeadline.Load() {
		t.Action, t.Reason = ActionWait, fmt.Sprintf("scan ran past its deadline (%v) before fencing; the next scan re-reads", s.opts.deadline)
		return
	}
	octx, op := s.tel.Op(ctx, telemetry.OpInsertMarker, primary)
	err := primary.InsertMarker(octx, resource.Marker{
		GTID: t.GTID, State: resource.StateAbort, Primary: t.Primary,
		Participants: t.Participants, Owner: s.opts.instanceID, Space: s.opts.space,
	})
	op.End(err)
	if errors.Is(err, resource.ErrMarkerExists) {
		var row resource.Marker
		octx, op := s.tel.Op(ctx, telemetry.OpReadMarker, primary)
		row, err = primary.ReadMarker(octx, t.GTID)
		op.End(err)
		if errors.Is(err, resource.ErrNoMarker) {
			// The row that beat the fence is gone already (collected after
			// its retention): the next scan sees what is left.
			t.Action, t.Reason, t.lateDecision = ActionWait, "the fence met a marker row that is gone now; next scan re-reads", true
			return
		}
		if err == nil {
			// The decision was learned after the branch listing, so the
			// listing proves nothing about branches prepared since.
			t.lateDecision = true
			t.Markers[t.Primary] = row
			t.Participants = slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(t.Participants), row.Participants...))))
			switch row.State {
			case resource.StateCommitted:
				t.Action, t.Reason = ActionWait, "the fence lost: the coordinator committed every branch (tombstone at the primary)"
				for i := range t.Branches {
					t.Branches[i].Done = true
				}
			case resource.StatePreCommit:
				t.Action, t.Reason = ActionCommit, "the fence lost to the coordinator's precommit row"
				s.finish(ctx, t, true, dry)
				s.complete(ctx, t, unreachable, dry)
			default:
				t.Action, t.Reason = ActionRollback, "abort row at the primary (another scanner fenced)"
				s.finish(ctx, t, false, dry)
			}
			return
		}
	}
	if err != nil {
		// The insert's outcome may be unknown: the next scan reads it.
		t.Action, t.Reason, t.Err = ActionInDoubt, "fence at the primary failed", err
		return
	}
	t.Markers[t.Primary] = resource.Marker{GTID: t.GTID, State: resource.StateAbort, Primary: t.Primary, Participants: t.Participants, Space: s.opts.space}
	t.Action, t.Reason = ActionFence, "no marker row; fenced at the primary"
	if n := s.finish(ctx, t, false, dry); n == 0 && len(t.Branches) > 0 && t.Action == ActionFence {
		t.Reason = "no marker row; fenced at the primary; no branch was left to roll back (finished elsewhere)"
	}
}

// finish commits or rolls back every prepared branch found, and returns
// how many it finished itself. A commit counts only on the driver's proof
// (resource.Resource.CommitPrepared); a contradiction makes the
// transaction heuristic.
func (s *Scanner) finish(ctx context.Context, t *TxReport, commit bool, dry bool) int {
	if dry {
		return 0
	}
	done := make([]bool, len(t.Branches))
	s.each(len(t.Branches), func(i int) {
		b := &t.Branches[i]
		r := s.res[b.Resource]
		var err error
		if commit {
			octx, op := s.tel.Op(ctx, telemetry.OpCommitPrepared, r)
			err = r.CommitPrepared(octx, b.XID)
			op.End(err)
		} else {
			octx, op := s.tel.Op(ctx, telemetry.OpRollbackPrepared, r)
			err = r.RollbackPrepared(octx, b.XID)
			op.End(err)
			if errors.Is(err, resource.ErrUnknownBranch) {
				// Not prepared any more and not committed: nothing is
				// left to roll back.
				b.Done = true
				return
			}
		}
		done[i] = err == nil
		b.Done, b.Err = err == nil, err
	})
	n := 0
	for i := range t.Branches {
		b := &t.Branches[i]
		if done[i] {
			n++
		}
		if !errors.Is(b.Err, resource.ErrHeuristic) {
			continue
		}
		if commit && len(t.Lost) == 0 {
			// Another scanner, or the coordinator, may have finished and
			// settled it since the listing, evidence rows and all: the
			// tombstone says so (and a decision row is gone only once its
			// tombstone was collected).
			row, err := s.readPrimary(ctx, t)
			switch {
			case err == nil && row.State == resource.StateCommitted, errors.Is(err, resource.ErrNoMarker):
				for j := range t.Branches {
					t.Branches[j].Done, t.Branches[j].Err = true, nil
				}
				t.Reason += "; settled meanwhile by another actor"
				return n
			case err != nil:
				b.Err = fmt.Errorf("the branch is gone without its evidence, and the primary's row could not be read to tell whether a peer settled the transaction: %w", err)
				continue
			}
		}
		t.Lost = append(t.Lost, b.Resource)
	}
	if len(t.Lost) > 0 {
		if commit {
			t.Action, t.Reason = ActionHeuristic, fmt.Sprintf("decided to commit, but branch %v is gone without the evidence of its commit; %s", t.Lost, hintOrphan)
		} else {
			t.Action, t.Reason = ActionHeuristic, fmt.Sprintf("abort row at the primary, but branch %v committed (committed outside threepc?); rows kept: repair by hand", t.Lost)
		}
	}
	return n
}

// complete settles a transaction decided to commit once every participant
// is proven committed: by this scan's own commit or by its evidence row.
// A participant that is neither listed as prepared nor proven, when the
// decision was read before the listing, contradicts the decision.
func (s *Scanner) complete(ctx context.Context, t *TxReport, unreachable map[string]error, dry bool) {
	if t.Action == ActionHeuristic {
		return
	}
	proven := map[string]bool{}
	listed := map[string]bool{}
	for _, b := range t.Branches {
		listed[b.Resource] = true
		proven[b.Resource] = b.Done
	}
	var missing []string
	for _, p := range decisionParticipants(t) {
		if proven[p] {
			continue
		}
		r, ok := s.res[p]
		if !ok || unreachable[p] != nil {
			t.Err = fmt.Errorf("participant %q not scanned: its branch is not proven committed", p)
			return
		}
		if listed[p] {
			return // still prepared: the next scan retries
		}
		if t.lateDecision && seeded.CollectAfterLateDecision.Load() {
			continue // the planted bug trusts the stale listing
		}
		octx, op := s.tel.Op(ctx, telemetry.OpCommitted, r)
		ok, err := r.Committed(octx, resource.XID{GTID: t.GTID, Primary: t.Primary, Branch: p, Space: s.opts.space})
		op.End(err)
		if err != nil {
			t.Err = fmt.Errorf("reading the evidence at %q: %w", p, err)
			return
		}
		if !ok {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		if t.lateDecision {
			// The listing predates the decision: the branch may have been
			// prepared since, and be committing now.
			t.Reason += fmt.Sprintf("; decision learned after the branch listing: %v not proven committed yet, the next scan checks the evidence", missing)
			t.unproven = true
			return
		}
		// Every branch was prepared before the decision row this scan
		// read, so each was either listed or finished by then. Unless
		// the transaction has been settled meanwhile, the missing
		// evidence is real.
		row, err := s.readPrimary(ctx, t)
		switch {
		case errors.Is(err, resource.ErrNoMarker):
			// A decision row (this precommit row proves there was one)
			// disappears only when its tombstone is collected, after every
			// branch was proven and the retention passed: these rows are
			// leftovers.
			if !dry {
				s.deleteRows(ctx, t, unreachable)
			}
			t.Reason += "; the primary's row was settled and collected: leftover rows deleted"
			return
		case err != nil:
			t.Err = err
			return
		case row.State != resource.StatePreCommit:
			return
		}
		t.Lost = missing
		t.Action, t.Reason = ActionHeuristic, fmt.Sprintf("decided to commit, but branch %v is gone without the evidence of its commit; %s", missing, hintOrphan)
		return
	}
	if dry {
		return
	}
	s.settle(ctx, t, unreachable)
}

// decisionParticipants is the participant list the coordinator wrote in
// its decision row (the branches that needed a commit: read-only voters
// are not in it), or, without such a row, every participant seen.
func decisionParticipants(t *TxReport) []string {
	if m, ok := t.Markers[t.Primary]; ok && m.State != resource.StateAbort {
		return m.Participants
	}
	for _, m := range t.Markers {
		if m.State == resource.StatePreCommit {
			return m.Participants
		}
	}
	return t.Participants
}

// readPrimary re-reads the primary's marker row.
func (s *Scanner) readPrimary(ctx context.Context, t *TxReport) (resource.Marker, error) {
	r, ok := s.res[t.Primary]
	if !ok {
		return resource.Marker{}, fmt.Errorf("primary %q is not one of this scanner's resources", t.Primary)
	}
	octx, op := s.tel.Op(ctx, telemetry.OpReadMarker, r)
	row, err := r.ReadMarker(octx, t.GTID)
	op.End(err)
	return row, err
}

// settle makes the primary's decision row a tombstone and deletes the
// other participants' rows, in that order (see txmanager's clean-up).
func (s *Scanner) settle(ctx context.Context, t *TxReport, unreachable map[string]error) {
	r, ok := s.res[t.Primary]
	if !ok || unreachable[t.Primary] != nil {
		// The others' rows stay too: while the primary says precommit, a
		// scan needs every branch's evidence.
		t.Reason += "; primary not reachable: the rows are settled later"
		return
	}
	// Always, even when this scan did not list the primary's row: the
	// listings run in parallel, so the primary may have been listed
	// before its decision and the others after their precommit rows. A
	// missing or already settled row is left alone.
	var err error
	if seeded.DeleteDecisionRow.Load() {
		octx, op := s.tel.Op(ctx, telemetry.OpDeleteMarkers, r)
		err = r.DeleteMarkers(octx, t.GTID)
		op.End(err)
	} else {
		octx, op := s.tel.Op(ctx, telemetry.OpTombstone, r)
		err = r.Tombstone(octx, t.GTID)
		op.End(err)
	}
	if err != nil {
		t.Err = fmt.Errorf("settling the decision row at %q: %w", t.Primary, err)
		return
	}
	s.deleteRows(ctx, t, unreachable)
	if t.Err == nil {
		t.Reason += "; every branch proven committed"
	}
}

// settled handles a transaction whose primary row is a committed
// tombstone: every branch was proven committed. Leftover rows elsewhere
// are deleted; the tombstone goes after the retention period.
func (s *Scanner) settled(ctx context.Context, t *TxReport, unreachable map[string]error, dry bool) {
	if len(t.Branches) > 0 {
		// The tombstone was read before the listing: a branch listed as
		// prepared contradicts it.
		for _, b := range t.Branches {
			t.Lost = append(t.Lost, b.Resource)
		}
		t.Action, t.Reason = ActionHeuristic, fmt.Sprintf("the primary's tombstone says every branch committed, but branch %v is prepared; rows kept: investigate", t.Lost)
		return
	}
	row := t.Markers[t.Primary]
	if row.Age >= s.opts.tombstones {
		s.collect(ctx, t, unreachable, dry)
		return
	}
	if len(t.Markers) > 1 && !dry {
		s.deleteRows(ctx, t, unreachable)
	}
	if t.Action == "" {
		t.Action, t.Reason = ActionWait, fmt.Sprintf("committed; the primary's tombstone is kept for the retention period (%v)", s.opts.tombstones)
	}
}

// collect deletes the rows of a finished transaction whose primary row
// (an abort or committed tombstone) has outlived the retention period, by
// the database's clock. Every participant must have been scanned.
func (s *Scanner) collect(ctx context.Context, t *TxReport, unreachable map[string]error, dry bool) {
	if len(t.Markers) == 0 || len(t.Branches) > 0 && !allDone(t.Branches) {
		return
	}
	for _, p := range t.Participants {
		if _, ok := s.res[p]; !ok || unreachable[p] != nil {
			if t.Action == "" {
				t.Action, t.Reason = ActionWait, fmt.Sprintf("marker rows kept: participant %q not scanned", p)
			}
			return
		}
	}
	if row, ok := t.Markers[t.Primary]; ok && !seeded.EarlyAbortCleanup.Load() {
		keep := s.opts.retention
		if row.State == resource.StateCommitted {
			keep = s.opts.tombstones
		}
		if row.Age < keep {
			if t.Action == "" {
				t.Action, t.Reason = ActionWait, fmt.Sprintf("%s row kept for the retention period (%v)", row.State, keep)
			}
			return
		}
	}
	if dry {
		if t.Action == "" {
			t.Action, t.Reason = ActionCollect, "finished, retention passed: would delete the marker rows"
		}
		return
	}
	// Deleted in batches at the end of the scan (collectBatch): at one
	// tombstone per committed transaction, one statement per gtid would
	// not keep up.
	t.collect = true
	if t.Action == "" {
		t.Action, t.Reason = ActionCollect, "finished, retention passed: marker rows deleted"
	}
}

// collectBatch deletes the rows of every transaction marked for
// collection: first at every participant but the primary, then at the
// primaries, one statement per resource and round (DeleteMarkers batches
// large lists itself). A failure leaves the rows to the next scan.
func (s *Scanner) collectBatch(ctx context.Context, txs []TxReport) {
	for _, primaries := range []bool{false, true} {
		by := map[string][]int{} // resource -> indexes into txs
		for i := range txs {
			t := &txs[i]
			if !t.collect || t.Err != nil {
				continue
			}
			for _, p := range t.Participants {
				if (p == t.Primary) == primaries {
					by[p] = append(by[p], i)
				}
			}
		}
		names := slices.Sorted(maps.Keys(by))
		errs := make([]error, len(names))
		s.each(len(names), func(k int) {
			r := s.res[names[k]]
			gtids := make([]string, len(by[names[k]]))
			for j, i := range by[names[k]] {
				gtids[j] = txs[i].GTID
			}
			octx, op := s.tel.Op(ctx, telemetry.OpDeleteMarkers, r)
			errs[k] = r.DeleteMarkers(octx, gtids...)
			op.End(errs[k])
		})
		for k, err := range errs {
			if err == nil {
				continue
			}
			s.opts.logger.Warn("threepc/recovery: marker rows not collected; the next scan retries", "resource", names[k], "transactions", len(by[names[k]]), "err", err)
			for _, i := range by[names[k]] {
				txs[i].Err = fmt.Errorf("deleting rows at %q: %w", names[k], err)
			}
		}
	}
}

// deleteRows deletes the gtid's rows at every participant but the
// primary.
func (s *Scanner) deleteRows(ctx context.Context, t *TxReport, unreachable map[string]error) {
	names := slices.DeleteFunc(slices.Clone(t.Participants), func(n string) bool { return n == t.Primary })
	for _, n := range names {
		r, ok := s.res[n]
		if !ok || unreachable[n] != nil {
			continue
		}
		octx, op := s.tel.Op(ctx, telemetry.OpDeleteMarkers, r)
		err := r.DeleteMarkers(octx, t.GTID)
		op.End(err)
		if err != nil {
			t.Err = fmt.Errorf("deleting rows at %q: %w", n, err)
			return
		}
	}
}

func allDone(bs []BranchReport) bool {
	for _, b := range bs {
		if !b.Done {
			return false
		}
	}
	return true
}
