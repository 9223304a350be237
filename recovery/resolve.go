package recovery

import (
	"context"
	"fmt"

	"github.com/threepc/threepc/internal/seeded"
	"github.com/threepc/threepc/internal/telemetry"
)

// hintOrphan is what an operator does about a decided branch gone without
// its evidence.
const hintOrphan = "marker rows kept. If the branch is on MariaDB, its server may hold it as an orphan " +
	"(prepared in InnoDB, not listed by XA RECOVER, holding its locks): restart that MariaDB server, then run " +
	"`threepc recover`, which commits it. Otherwise it was rolled back outside threepc (an operator's XA ROLLBACK or " +
	"ROLLBACK PREPARED): repair that branch's data by hand, then delete the gtid's rows from threepc_markers"

// seededBugs reads the planted bugs that concern the planner.
func seededBugs() bugs {
	return bugs{
		abortWithoutFence:        seeded.AbortWithoutFence.Load(),
		fenceWithoutDeadline:     seeded.FenceWithoutDeadline.Load(),
		collectAfterLateDecision: seeded.CollectAfterLateDecision.Load(),
		deleteDecisionRow:        seeded.DeleteDecisionRow.Load(),
		earlyAbortCleanup:        seeded.EarlyAbortCleanup.Load(),
	}
}

// resolve carries out the planner's decisions on one transaction: it asks
// the planner for the next database call, makes it, and asks again with
// the result, until the planner has nothing more to do.
func (s *Scanner) resolve(ctx context.Context, cfg *planConfig, f *txFacts) TxReport {
	cfg.bugs = seededBugs()
	now := s.opts.clock.Now()
	var results []result
	for {
		pl := plan(cfg, f, now, results)
		if pl.Next == nil {
			return pl.Report
		}
		results = append(results, s.do(ctx, f.GTID, *pl.Next))
	}
}

// do makes the database call a asks for.
func (s *Scanner) do(ctx context.Context, gtid string, a action) result {
	res := result{Kind: a.Kind}
	r := s.res[a.Resource]
	switch a.Kind {
	case actInsertMarker:
		octx, op := s.tel.Op(ctx, telemetry.OpInsertMarker, r)
		res.Err = r.InsertMarker(octx, a.Marker)
		op.End(res.Err)
	case actReadMarker:
		octx, op := s.tel.Op(ctx, telemetry.OpReadMarker, r)
		res.Row, res.Err = r.ReadMarker(octx, a.GTID)
		op.End(res.Err)
	case actCommitted:
		octx, op := s.tel.Op(ctx, telemetry.OpCommitted, r)
		res.OK, res.Err = r.Committed(octx, a.XID)
		op.End(res.Err)
	case actTombstone:
		octx, op := s.tel.Op(ctx, telemetry.OpTombstone, r)
		res.Err = r.Tombstone(octx, a.GTID)
		op.End(res.Err)
	case actDeleteMarkers:
		octx, op := s.tel.Op(ctx, telemetry.OpDeleteMarkers, r)
		res.Err = r.DeleteMarkers(octx, a.GTID)
		op.End(res.Err)
	case actFinish:
		res.Errs = make([]error, len(a.Branches))
		s.each(len(a.Branches), func(i int) {
			b := a.Branches[i]
			r := s.res[b.Resource]
			if a.Commit {
				octx, op := s.tel.Op(ctx, telemetry.OpCommitPrepared, r)
				res.Errs[i] = r.CommitPrepared(octx, b.XID)
				op.End(res.Errs[i])
			} else {
				octx, op := s.tel.Op(ctx, telemetry.OpRollbackPrepared, r)
				res.Errs[i] = r.RollbackPrepared(octx, b.XID)
				op.End(res.Errs[i])
			}
		})
	default:
		panic(fmt.Sprintf("threepc/recovery: %s: unknown action %v", gtid, a.Kind))
	}
	return res
}

// collectBatches deletes the rows of every transaction marked for
// collection, in the two rounds planCollect gives, one statement per
// resource and round (DeleteMarkers batches large lists itself). A
// failure leaves the rows to the next scan.
func (s *Scanner) collectBatches(ctx context.Context, txs []TxReport) {
	for _, primaries := range []bool{false, true} {
		batches := planCollect(txs, primaries)
		errs := make([]error, len(batches))
		s.each(len(batches), func(k int) {
			r := s.res[batches[k].Resource]
			octx, op := s.tel.Op(ctx, telemetry.OpDeleteMarkers, r)
			errs[k] = r.DeleteMarkers(octx, batches[k].GTIDs...)
			op.End(errs[k])
		})
		for k, err := range errs {
			if err != nil {
				s.opts.logger.Warn("threepc/recovery: marker rows not collected; the next scan retries", "resource", batches[k].Resource, "transactions", len(batches[k].Txs), "err", err)
			}
		}
		collected(txs, batches, errs)
	}
}
