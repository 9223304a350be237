package txmanager

import (
	"context"
	"errors"
	"fmt"
	"slices"

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
	if m.opts.lastResource && branches[0].branch.CanCommitWithMarker() {
		last, voters = branches[0], branches[1:]
	}
	live, err := tx.vote(ctx, branches, voters)
	if err != nil {
		return err
	}
	if last != nil {
		if len(live) == 0 {
			// Every other branch was read-only: a local commit suffices.
			return tx.commitOnePhase(ctx, last)
		}
		// The primary's branch is undecided too until its commit.
		live = append([]*branch{last}, live...)
	}
	if len(live) == 0 {
		return nil // every branch was read-only: nothing to commit
	}

	marker, err := tx.decidePhase(ctx, live, last)
	if err != nil {
		return err
	}
	// Past the point of no return: nothing below may abort, and the
	// caller's cancellation no longer applies.
	ctx = context.WithoutCancel(ctx)
	_ = m.failpoint(ctx, AfterDecide, tx.gtid, tx.primary)

	if last != nil {
		tx.closeBranch(live[0]) // committed with the decision
		live = live[1:]
	}
	if err := tx.preCommitAndCommit(ctx, marker, live, last != nil); err != nil {
		return err
	}
	tx.cleanup(ctx, marker.Participants)
	return nil
}

// preCommitAndCommit writes the precommit rows (3PC) and then commits
// live. One case overlaps the two: with the primary already committed
// with its decision (logging last resource) and a single branch left,
// that branch's precommit row and its commit go out together. The
// ordering exists so that no branch commits while another undecided
// branch still lacks a row that lets recovery commit it without the
// primary; here there is no other undecided branch. Whatever subset of
// the two statements lands, the states a crash can leave are those of
// the sequential order (prepared without a row, prepared with a row,
// committed), so a lost primary blocks in exactly the same cases, one
// round trip sooner.
func (tx *Tx) preCommitAndCommit(ctx context.Context, marker resource.Marker, live []*branch, primaryCommitted bool) error {
	m := tx.m
	if m.opts.protocol != ThreePC {
		return tx.commitAll(ctx, live)
	}
	if !primaryCommitted || len(live) != 1 && !seeded.OverlapEveryBranch.Load() || seeded.EarlyPreCommit.Load() {
		tx.preCommit(ctx, marker, live)
		return tx.commitAll(ctx, live)
	}
	var err error
	first := 0 // in sequential runs (model tests), which goes first
	if m.opts.commitFirst != nil && m.opts.commitFirst() {
		first = 1
	}
	m.each(2, func(i int) {
		if (i+first)%2 == 0 {
			tx.preCommit(ctx, marker, live)
		} else {
			err = tx.commitAll(ctx, live)
		}
	})
	return err
}

// vote prepares the voters (every branch but the last resource's) under
// the transaction timeout. It returns the voters that still need their
// commit (read-only voters are finished and closed), or the abort of all
// branches.
func (tx *Tx) vote(ctx context.Context, branches, voters []*branch) ([]*branch, error) {
	m := tx.m
	if err := tx.checkDeadline(ctx); err != nil {
		return nil, tx.abort(ctx, branches, "", resource.PhasePrepare, err)
	}
	prepCtx, cancel := context.WithDeadlineCause(ctx, tx.wallDeadline(), ErrTimeout)
	prepCtx, phase := tx.tel.Phase(prepCtx, resource.PhasePrepare)
	errs := m.fanout(voters, func(b *branch) error {
		if err := m.failpoint(prepCtx, BeforePrepare, tx.gtid, b.xid.Branch); err != nil {
			return err
		}
		vote, err := b.branch.Prepare(prepCtx)
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
		return nil, tx.abort(ctx, branches, voters[i].xid.Branch, resource.PhasePrepare, err)
	}
	live := slices.DeleteFunc(slices.Clone(voters), func(b *branch) bool { return b.readOnly })
	for _, b := range voters {
		if b.readOnly {
			tx.closeBranch(b)
		}
	}
	return live, nil
}

// decidePhase records the decision for live (the last resource's branch
// first, if any): the commit point. It returns the decision row, or the
// error Commit returns: in doubt (every branch left to recovery) or the
// abort of live.
func (tx *Tx) decidePhase(ctx context.Context, live []*branch, last *branch) (resource.Marker, error) {
	m := tx.m
	if err := tx.checkDeadline(ctx); err != nil {
		return resource.Marker{}, tx.abort(ctx, live, "", resource.PhaseDecide, err)
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
	var err error
	if last != nil {
		err = tx.decideLast(dctx, marker, last)
	} else {
		err = tx.decide(dctx, marker)
	}
	phase.End(err)
	switch {
	case errors.Is(err, ErrInDoubt):
		tx.closeAll(live)
		return resource.Marker{}, err
	case err != nil:
		return resource.Marker{}, tx.abort(ctx, live, tx.primary, resource.PhaseDecide, err)
	}
	return marker, nil
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
	err := b.branch.CommitOnePhase(octx)
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
