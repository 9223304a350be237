package txmanager

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/threepc/threepc/internal/fanout"
	"github.com/threepc/threepc/internal/seeded"
	"github.com/threepc/threepc/internal/telemetry"
	"github.com/threepc/threepc/resource"
)

// Commit commits the transaction on every enlisted resource, atomically.
//
// nil means every branch is committed. Otherwise the error matches one
// of:
//   - ErrAborted (an *AbortError): every branch is rolled back, or will
//     be by recovery; nothing committed.
//   - ErrInDoubt (an *InDoubtError): whether the commit point was reached
//     is unknown; recovery will finish the transaction one way.
//   - ErrCommitPending (a *CommitPendingError): decided to commit; some
//     branches will be committed by recovery.
//   - ErrTxDone.
//
// ctx bounds the work before the commit point (prepare and decision).
// Once the decision is recorded the commit phase runs to completion (or
// the commit timeout) even if ctx is cancelled.
func (tx *Tx) Commit(ctx context.Context) (err error) {
	branches, err := tx.finish()
	if err != nil {
		return err
	}
	defer tx.releaseStatements()
	defer func() { tx.endTelemetry(telemetryOutcome(OutcomeOf(err)), err) }()
	ctx = tx.tel.Context(ctx)
	m := tx.m
	if tx.failed != nil {
		return tx.abort(ctx, branches, "", resource.PhaseBegin, tx.failed)
	}
	switch {
	case len(branches) == 0:
		return nil
	case len(branches) == 1 && m.opts.onePhase:
		return tx.commitOnePhase(ctx, branches[0])
	}

	// Logging last resource: the primary is not prepared; its one-phase
	// commit, with the decision row inserted inside it, is the commit
	// point.
	var last *branch
	voters := branches
	if m.opts.lastResource && branches[0].b.CanCommitWithMarker() {
		last, voters = branches[0], branches[1:]
	}

	// Vote. The transaction timeout bounds the work and the vote.
	if err := tx.checkDeadline(ctx); err != nil {
		return tx.abort(ctx, branches, "", resource.PhasePrepare, err)
	}
	prepCtx, cancel := context.WithDeadlineCause(ctx, tx.wallDeadline(), ErrTimeout)
	prepCtx, phase := tx.tel.Phase(prepCtx, resource.PhasePrepare)
	errs := m.fanout(voters, func(b *branch) error {
		if err := m.failpoint(prepCtx, BeforePrepare, tx.gtid, b.xid.Branch); err != nil {
			return err
		}
		vote, err := b.b.Prepare(prepCtx)
		if err != nil {
			return tx.stmtError(err)
		}
		b.prepared = vote == resource.VotePrepared
		b.readOnly = vote == resource.VoteReadOnly
		return m.failpoint(prepCtx, AfterPrepare, tx.gtid, b.xid.Branch)
	})
	cancel()
	phase.End(errors.Join(errs...))
	if i, err := firstError(errs); err != nil {
		if ctx.Err() != nil {
			// The caller gave up during the vote: say so, whatever the
			// branch's own error looks like (a cancelled statement often
			// surfaces as a broken connection).
			err = fmt.Errorf("%w (context done during the vote: %w)", err, context.Cause(ctx))
		}
		return tx.abort(ctx, branches, voters[i].xid.Branch, resource.PhasePrepare, err)
	}
	live := slices.DeleteFunc(slices.Clone(voters), func(b *branch) bool { return b.readOnly })
	for _, b := range voters {
		if b.readOnly {
			tx.closeBranch(b)
		}
	}
	if last != nil {
		if len(live) == 0 {
			// Every other branch was read-only: a local commit suffices.
			return tx.commitOnePhase(ctx, branches[0])
		}
		// The primary's branch is undecided too until its commit.
		live = append([]*branch{branches[0]}, live...)
	}
	if len(live) == 0 {
		return nil // every branch was read-only: nothing to commit
	}

	// Decide. The precommit row at the primary is the commit point.
	if err := tx.checkDeadline(ctx); err != nil {
		return tx.abort(ctx, live, "", resource.PhaseDecide, err)
	}
	// The participants are the branches that still need their commit:
	// read-only voters are finished and leave no evidence to look for.
	marker := resource.Marker{
		GTID:         tx.gtid,
		State:        resource.StatePreCommit,
		Primary:      tx.primary,
		Participants: participantNames(live),
		Owner:        m.opts.instanceID,
		Space:        m.opts.space,
	}
	if m.opts.protocol == ThreePC && seeded.EarlyPreCommit.Load() {
		tx.preCommit(ctx, marker, live)
	}
	dctx, phase := tx.tel.Phase(ctx, resource.PhaseDecide)
	if last != nil {
		err = tx.decideLast(dctx, marker, last)
	} else {
		err = tx.decide(dctx, marker)
	}
	phase.End(err)
	switch {
	case errors.Is(err, ErrInDoubt):
		tx.closeAll(live)
		return err
	case err != nil:
		return tx.abort(ctx, live, tx.primary, resource.PhaseDecide, err)
	}
	// Past the point of no return: nothing below may abort, and the
	// caller's cancellation no longer applies.
	ctx = context.WithoutCancel(ctx)
	_ = m.failpoint(ctx, AfterDecide, tx.gtid, tx.primary)

	if last != nil {
		tx.closeBranch(live[0]) // committed with the decision
		live = live[1:]
	}
	if m.opts.protocol == ThreePC {
		tx.preCommit(ctx, marker, live)
	}
	if err := tx.commitAll(ctx, live); err != nil {
		return err
	}
	tx.cleanup(ctx, marker.Participants)
	return nil
}

// Rollback rolls the transaction back. Rolling back a finished
// transaction returns ErrTxDone.
func (tx *Tx) Rollback(ctx context.Context) (err error) {
	branches, err := tx.finish()
	if err != nil {
		return err
	}
	defer tx.releaseStatements()
	defer func() { tx.endTelemetry(telemetry.OutcomeAborted, err) }()
	return tx.rollbackAll(tx.tel.Context(ctx), branches)
}

func (tx *Tx) checkDeadline(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("context done before the decision: %w", context.Cause(ctx))
	}
	if !tx.m.opts.clock.Now().Before(tx.deadline) {
		return tx.timeoutError()
	}
	return nil
}

func (tx *Tx) commitOnePhase(ctx context.Context, b *branch) error {
	m := tx.m
	defer tx.closeBranch(b)
	if err := tx.checkDeadline(ctx); err != nil {
		return tx.abort(ctx, []*branch{b}, "", resource.PhaseCommit, err)
	}
	if err := m.failpoint(ctx, BeforeOnePhase, tx.gtid, b.xid.Branch); err != nil {
		return tx.abort(ctx, []*branch{b}, b.xid.Branch, resource.PhaseCommit, err)
	}
	// Once COMMIT is sent its outcome must be learned, so the caller's
	// cancellation no longer applies.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.opts.commitTimeout)
	defer cancel()
	octx, phase := tx.tel.Phase(cctx, resource.PhaseCommitOnePhase)
	err := b.b.CommitOnePhase(octx)
	phase.End(err)
	switch {
	case err == nil:
		return nil
	case resource.IsConnectionError(err) || cctx.Err() != nil:
		// The local commit may or may not have happened, and there is no
		// marker to ask: only the application can tell.
		return &InDoubtError{GTID: tx.gtid, Primary: b.xid.Branch, Err: err}
	}
	return tx.abort(ctx, []*branch{b}, b.xid.Branch, resource.PhaseCommit, err)
}

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
		err := m.insertMarker(ictx, primary, marker)
		if errors.Is(err, resource.ErrMarkerExists) {
			var row resource.Marker
			row, err = primary.ReadMarker(ictx, tx.gtid)
			if err == nil {
				cancel()
				if row.State != resource.StateAbort {
					return nil // our own earlier attempt got in
				}
				return ErrFenced
			}
		}
		cancel()
		if err == nil {
			return nil
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
	err := last.b.CommitWithMarker(ictx, marker)
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
		err := primary.InsertMarker(fctx, fence)
		if err == nil {
			cancel()
			return fmt.Errorf("%w: the primary's commit did not happen (fenced by the coordinator): %w", ErrFenced, lastErr)
		}
		if errors.Is(err, resource.ErrMarkerExists) {
			var row resource.Marker
			row, err = primary.ReadMarker(fctx, tx.gtid)
			if err == nil {
				cancel()
				if row.State != resource.StateAbort {
					return nil // precommit, or already a committed tombstone
				}
				return ErrFenced
			}
		}
		cancel()
		lastErr = err
		if serr := m.opts.sleep(ctx, backoff(attempt)); serr != nil {
			break
		}
	}
	return &InDoubtError{GTID: tx.gtid, Primary: tx.primary, Err: lastErr}
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

// commitAll commits every prepared branch, retrying within the commit
// timeout. ctx is already detached from the caller's cancellation. A
// branch counts as committed only on the driver's proof (resource.Branch
// Commit): a branch gone without its evidence is a heuristic outcome,
// reported as such, and its marker rows stay for recovery.
func (tx *Tx) commitAll(ctx context.Context, live []*branch) error {
	m := tx.m
	ctx, phase := tx.tel.Phase(ctx, resource.PhaseCommit)
	cctx, cancel := context.WithTimeout(ctx, m.opts.commitTimeout)
	defer cancel()
	errs := m.fanout(live, func(b *branch) error {
		defer tx.closeBranch(b)
		if err := m.failpoint(cctx, BeforeCommit, tx.gtid, b.xid.Branch); err != nil {
			return err
		}
		// One span for the commit and its retries by id, which go to the
		// driver directly.
		octx, op := b.res.Op(cctx, telemetry.OpCommit)
		err := tx.commitBranch(octx, b)
		op.End(err)
		if err != nil {
			return err
		}
		return m.failpoint(cctx, AfterCommit, tx.gtid, b.xid.Branch)
	})
	phase.End(errors.Join(errs...))
	var pending, lost []string
	for i, err := range errs {
		switch {
		case err == nil:
		case errors.Is(err, resource.ErrHeuristic):
			lost = append(lost, live[i].xid.Branch)
			m.opts.logger.Error("threepc: heuristic outcome: a branch of a transaction decided to commit is gone without the evidence of its commit; its marker rows are kept (see `threepc inspect`)",
				"gtid", tx.gtid, "resource", live[i].xid.Branch, "err", err)
		default:
			pending = append(pending, live[i].xid.Branch)
		}
	}
	switch {
	case len(lost) > 0:
		return &HeuristicError{GTID: tx.gtid, Branches: lost, Pending: pending, Err: errors.Join(errs...)}
	case len(pending) > 0:
		return &CommitPendingError{GTID: tx.gtid, Pending: pending, Err: errors.Join(errs...)}
	}
	return nil
}

// commitBranch commits one prepared branch: on its own connection first,
// then by id from the pool, until the commit timeout. Only the driver's
// nil (an authoritative answer or the branch's evidence) ends it early;
// a heuristic outcome is final.
func (tx *Tx) commitBranch(ctx context.Context, b *branch) error {
	m := tx.m
	giveUp := m.opts.clock.Now().Add(m.opts.commitTimeout)
	err := b.b.Unwrap().Commit(ctx)
	for attempt := 1; err != nil; attempt++ {
		if errors.Is(err, resource.ErrHeuristic) {
			// A scan may have committed the branch and settled the
			// transaction, evidence rows and all, since: the tombstone
			// at the primary is written only once every branch is proven.
			settled, serr := tx.settled(ctx)
			switch {
			case settled:
				return nil
			case serr == nil:
				return err
			}
			// Unknown either way: not heuristic until the primary says
			// so; retried, and pending at worst.
			err = fmt.Errorf("the branch is gone without its evidence, and the decision row could not be read to tell whether a peer settled the transaction: %w", serr)
		}
		if !m.opts.clock.Now().Before(giveUp) {
			return err
		}
		telemetry.Retry(ctx, attempt, err)
		if serr := m.opts.sleep(ctx, backoff(attempt)); serr != nil {
			return errors.Join(err, serr)
		}
		tx.closeBranch(b) // the pinned connection is suspect: go by id
		err = b.res.Unwrap().CommitPrepared(ctx, b.xid)
	}
	return nil
}

// settled reports whether the primary's decision row is a committed
// tombstone: proof that every branch committed.
func (tx *Tx) settled(ctx context.Context) (bool, error) {
	primary := tx.m.res[tx.primary]
	row, err := primary.ReadMarker(ctx, tx.gtid)
	switch {
	case errors.Is(err, resource.ErrNoMarker):
		// After this coordinator's decision, its row disappears only
		// when the tombstone is collected, once every branch was proven.
		return true, nil
	case err != nil:
		return false, err
	}
	return row.State == resource.StateCommitted, nil
}

// cleanup settles the marker rows once every branch is proven committed:
// the primary's decision row becomes a tombstone (it must outlive any
// scan or self-fence that could still act on its absence), then the other
// participants' rows (precommit markers, evidence) are deleted. The order
// matters: while the primary still says precommit, a scan needs every
// branch's evidence. Rows left behind are settled by recovery.
func (tx *Tx) cleanup(ctx context.Context, participants []string) {
	m := tx.m
	ctx, phase := tx.tel.Phase(ctx, resource.PhaseCleanup)
	defer phase.End(nil)
	cctx, cancel := context.WithTimeout(ctx, m.opts.cleanupTimeout)
	defer cancel()
	if err := m.failpoint(cctx, BeforeCleanup, tx.gtid, tx.primary); err != nil {
		return
	}
	others := slices.DeleteFunc(slices.Clone(participants), func(n string) bool { return n == tx.primary })
	if m.cleaner != nil && m.cleaner.enqueue(cleanupJob{gtid: tx.gtid, primary: tx.primary, others: others}) {
		return
	}
	if err := m.settlePrimary(cctx, tx.primary, tx.gtid); err != nil {
		m.opts.logger.Info("threepc: marker clean-up deferred to recovery", "gtid", tx.gtid, "resource", tx.primary, "err", err)
		return
	}
	m.each(len(others), func(i int) {
		r := m.res[others[i]]
		err := r.DeleteMarkers(cctx, tx.gtid)
		if err != nil {
			m.opts.logger.Info("threepc: marker clean-up deferred to recovery", "gtid", tx.gtid, "resource", r.Name(), "err", err)
		}
	})
	_ = m.failpoint(cctx, AfterCleanup, tx.gtid, tx.primary)
}

// settlePrimary turns the primary's decision rows of gtids into
// tombstones.
func (m *Manager) settlePrimary(ctx context.Context, primary string, gtids ...string) error {
	r := m.res[primary]
	if seeded.DeleteDecisionRow.Load() {
		return r.DeleteMarkers(ctx, gtids...)
	}
	return r.Tombstone(ctx, gtids...)
}

// abort rolls back branches and returns the AbortError.
func (tx *Tx) abort(ctx context.Context, branches []*branch, culprit string, phase resource.Phase, cause error) error {
	if err := tx.rollbackAll(ctx, branches); err != nil {
		tx.m.opts.logger.Warn("threepc: rollback incomplete; recovery will finish it", "gtid", tx.gtid, "err", err)
	}
	var be *resource.BranchError
	if culprit == "" && errors.As(cause, &be) {
		culprit, phase, cause = be.Resource, be.Phase, be.Err
	}
	return &AbortError{GTID: tx.gtid, Resource: culprit, Phase: phase, Err: cause}
}

// rollbackAll rolls back every branch. A prepared branch that cannot be
// rolled back now stays prepared without a decision: recovery fences it
// and rolls it back.
func (tx *Tx) rollbackAll(ctx context.Context, branches []*branch) error {
	m := tx.m
	ctx, phase := tx.tel.Phase(ctx, resource.PhaseRollback)
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.opts.commitTimeout)
	defer cancel()
	errs := m.fanout(branches, func(b *branch) error {
		defer tx.closeBranch(b)
		if b.readOnly {
			return nil
		}
		if err := m.failpoint(rctx, BeforeRollback, tx.gtid, b.xid.Branch); err != nil {
			return err
		}
		err := b.b.Rollback(rctx)
		if err != nil && b.prepared && !errors.Is(err, resource.ErrUnknownBranch) {
			err = b.res.RollbackPrepared(rctx, b.xid)
		}
		if err != nil && !errors.Is(err, resource.ErrUnknownBranch) {
			return &resource.BranchError{Resource: b.xid.Branch, Phase: resource.PhaseRollback, Err: err}
		}
		return m.failpoint(rctx, AfterRollback, tx.gtid, b.xid.Branch)
	})
	err := errors.Join(errs...)
	phase.End(err)
	return err
}

func (tx *Tx) closeBranch(b *branch) {
	tx.mu.Lock()
	closed := b.closed
	b.closed = true
	tx.mu.Unlock()
	if !closed {
		_ = b.b.Close()
	}
}

func (tx *Tx) closeAll(branches []*branch) {
	for _, b := range branches {
		tx.closeBranch(b)
	}
}

// fanout runs f for every branch, in parallel unless the manager is
// sequential, and returns the errors by index.
func (m *Manager) fanout(branches []*branch, f func(b *branch) error) []error {
	errs := make([]error, len(branches))
	m.each(len(branches), func(i int) { errs[i] = f(branches[i]) })
	return errs
}

// each runs f(0..n-1), in parallel unless sequential (deterministic tests).
func (m *Manager) each(n int, f func(i int)) { fanout.Each(n, m.opts.sequential, f) }

func firstError(errs []error) (int, error) {
	for i, err := range errs {
		if err != nil {
			return i, err
		}
	}
	return -1, nil
}

func participantNames(branches []*branch) []string {
	names := make([]string, len(branches))
	for i, b := range branches {
		names[i] = b.xid.Branch
	}
	slices.Sort(names)
	return names
}

func backoff(attempt int) time.Duration {
	d := 10 * time.Millisecond << min(attempt, 6)
	return min(d, time.Second)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
