package recovery

import (
	"context"
	"fmt"

	"github.com/threepc/threepc/internal/seeded"
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
		res.Err = r.InsertMarker(ctx, a.Marker)
	case actReadMarker:
		res.Row, res.Err = r.ReadMarker(ctx, a.GTID)
	case actCommitted:
		res.OK, res.Err = r.Committed(ctx, a.XID)
	case actTombstone:
		res.Err = r.Tombstone(ctx, a.GTID)
	case actDeleteMarkers:
		res.Err = r.DeleteMarkers(ctx, a.GTID)
	case actFinish:
		res.Errs = make([]error, len(a.Branches))
		s.each(len(a.Branches), func(i int) {
			b := a.Branches[i]
			r := s.res[b.Resource]
			if a.Commit {
				res.Errs[i] = r.CommitPrepared(ctx, b.XID)
			} else {
				res.Errs[i] = r.RollbackPrepared(ctx, b.XID)
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
			errs[k] = r.DeleteMarkers(ctx, batches[k].GTIDs...)
		})
		for k, err := range errs {
			if err != nil {
				s.opts.logger.Warn("threepc/recovery: marker rows not collected; the next scan retries", "resource", batches[k].Resource, "transactions", len(batches[k].Txs), "err", err)
			}
		}
		collected(txs, batches, errs)
	}
}
