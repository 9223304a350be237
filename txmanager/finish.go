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
	err := b.branch.Unwrap().Commit(ctx)
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
		err := b.branch.Rollback(rctx)
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
		_ = b.branch.Close()
	}
}

func (tx *Tx) closeAll(branches []*branch) {
	for _, b := range branches {
		tx.closeBranch(b)
	}
}
