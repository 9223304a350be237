package txmanager

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/threepc/threepc/internal/seeded"
	"github.com/threepc/threepc/internal/telemetry"
	"github.com/threepc/threepc/resource"
)

// decide records the commit decision at the primary: a compare-and-set
// insert of the precommit row. It returns nil once the row is known to be
// in; an error matching ErrInDoubt when that stays unknown until the
// decision deadline; any other error when the transaction must abort.
func (tx *Tx) decide(ctx context.Context, marker resource.Marker) error {
	m := tx.m
	primary := m.res[tx.primary]
	decisionDeadline := tx.deadline.Add(m.opts.decideTimeout)
	var lastErr error
	for attempt := 0; ; attempt++ {
		if !m.opts.clock.Now().Before(decisionDeadline) {
			if lastErr == nil {
				return ErrDecisionDeadline
			}
			return &InDoubtError{GTID: tx.gtid, Primary: tx.primary, Err: lastErr}
		}
		if attempt > 0 {
			if err := m.opts.sleep(ctx, backoff(attempt)); err != nil && lastErr != nil {
				// A cancelled caller does not settle an unknown outcome.
				return &InDoubtError{GTID: tx.gtid, Primary: tx.primary, Err: errors.Join(lastErr, err)}
			}
		}
		// The failpoint sits after the deadline check on purpose: a
		// coordinator can always stall between checking its clock and its
		// insert reaching the primary. The fence (and the abort rows'
		// retention) is what keeps such a late insert harmless.
		if err := m.failpoint(ctx, BeforeDecide, tx.gtid, tx.primary); err != nil {
			if lastErr == nil {
				return err
			}
			return &InDoubtError{GTID: tx.gtid, Primary: tx.primary, Err: errors.Join(lastErr, err)}
		}
		ictx, cancel := context.WithDeadline(context.WithoutCancel(ctx), time.Now().Add(decisionDeadline.Sub(m.opts.clock.Now())))
		row, inserted, err := m.insertOrRead(ictx, primary, marker, true)
		cancel()
		switch {
		case err != nil:
		case inserted || row.State != resource.StateAbort:
			return nil // in, or our own earlier attempt got in
		default:
			return ErrFenced
		}
		if lastErr == nil && !resource.IsConnectionError(err) && !errors.Is(err, context.DeadlineExceeded) {
			// A clean refusal on the first attempt: nothing was written.
			return err
		}
		// The insert's outcome is unknown. Retrying the same insert is
		// safe: only this coordinator writes precommit for its gtid, so
		// ErrMarkerExists then tells which way it went.
		lastErr = err
		telemetry.Retry(ctx, attempt+1, err)
		m.opts.logger.Warn("threepc: decision outcome unknown, retrying", "gtid", tx.gtid, "primary", tx.primary, "attempt", attempt+1, "err", err)
	}
}

// decideLast is decide for the logging-last-resource optimization: the
// primary's branch commits one-phase with the precommit row inside it. If
// that commit's outcome is unknown, the coordinator fences itself: an
// abort row inserted at the primary either goes in (the commit did not
// happen and never will: the gtid's primary key serializes the two) or
// meets the precommit row (it did).
func (tx *Tx) decideLast(ctx context.Context, marker resource.Marker, last *branch) error {
	m := tx.m
	decisionDeadline := tx.deadline.Add(m.opts.decideTimeout)
	if err := m.failpoint(ctx, BeforeDecide, tx.gtid, tx.primary); err != nil {
		return err
	}
	ictx, cancel := context.WithDeadline(context.WithoutCancel(ctx), time.Now().Add(decisionDeadline.Sub(m.opts.clock.Now())))
	err := last.branch.CommitWithMarker(ictx, marker)
	cancel()
	switch {
	case err == nil:
		return nil
	case errors.Is(err, resource.ErrMarkerExists):
		return ErrFenced
	case !resource.IsConnectionError(err) && !errors.Is(err, context.DeadlineExceeded):
		return err // refused: the primary's transaction rolled back
	}
	primary := m.res[tx.primary]
	fence := marker
	fence.State = resource.StateAbort
	lastErr := err
	// The fence is safe only while the decision row, had the commit gone
	// in, is sure to be there: recovery keeps it for its retention
	// period, hours, and this fence gives up after one more decide
	// timeout, on the monotonic clock (Manager.DecisionWindow).
	giveUp := decisionDeadline.Add(m.opts.decideTimeout)
	if seeded.FenceWithoutDeadline.Load() {
		giveUp = m.opts.clock.Now().Add(24 * time.Hour)
	}
	for attempt := 1; m.opts.clock.Now().Before(giveUp); attempt++ {
		m.opts.logger.Warn("threepc: outcome of the primary's commit unknown, fencing", "gtid", tx.gtid, "primary", tx.primary, "attempt", attempt, "err", lastErr)
		fctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), time.Now().Add(giveUp.Sub(m.opts.clock.Now())))
		row, inserted, err := m.insertOrRead(fctx, primary, fence, false)
		cancel()
		switch {
		case err != nil:
		case inserted:
			return fmt.Errorf("%w: the primary's commit did not happen (fenced by the coordinator): %w", ErrFenced, lastErr)
		case row.State != resource.StateAbort:
			return nil // precommit, or already a committed tombstone
		default:
			return ErrFenced
		}
		lastErr = err
		if serr := m.opts.sleep(ctx, backoff(attempt)); serr != nil {
			break
		}
	}
	return &InDoubtError{GTID: tx.gtid, Primary: tx.primary, Err: lastErr}
}

// insertOrRead is the compare-and-set on a gtid's marker row: it inserts
// row at r (through r's batch when batched) and, when another row holds
// the gtid (ErrMarkerExists), reads that row back. inserted reports that
// row went in; otherwise found is the row in place. err is the insert's
// failure, never ErrMarkerExists, or the read's.
func (m *Manager) insertOrRead(ctx context.Context, r *telemetry.Resource, row resource.Marker, batched bool) (found resource.Marker, inserted bool, err error) {
	if batched {
		err = m.insertMarker(ctx, r, row)
	} else {
		err = r.InsertMarker(ctx, row)
	}
	if !errors.Is(err, resource.ErrMarkerExists) {
		return row, err == nil, err
	}
	found, err = r.ReadMarker(ctx, row.GTID)
	return found, false, err
}

// preCommit writes the precommit row at every non-primary participant
// (3PC). Failures do not abort: the decision is already made.
func (tx *Tx) preCommit(ctx context.Context, marker resource.Marker, live []*branch) {
	m := tx.m
	var others []*branch
	for _, b := range live {
		if b.xid.Branch != tx.primary {
			others = append(others, b)
		}
	}
	ctx, phase := tx.tel.Phase(ctx, resource.PhasePreCommit)
	cctx, cancel := context.WithTimeout(ctx, m.opts.commitTimeout)
	defer cancel()
	errs := m.fanout(others, func(b *branch) error {
		if err := m.failpoint(cctx, BeforePreCommit, tx.gtid, b.xid.Branch); err != nil {
			return err
		}
		err := m.insertMarker(cctx, b.res, marker)
		if err != nil && !errors.Is(err, resource.ErrMarkerExists) {
			return err
		}
		return m.failpoint(cctx, AfterPreCommit, tx.gtid, b.xid.Branch)
	})
	phase.End(errors.Join(errs...))
	for i, err := range errs {
		if err != nil {
			m.opts.logger.Warn("threepc: pre-commit marker not written; recovery may need the primary", "gtid", tx.gtid, "resource", others[i].xid.Branch, "err", err)
		}
	}
}
