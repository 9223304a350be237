package txmanager

import (
	"context"
	"slices"
)

// Failpoint names one step of the protocol at which tests inject faults:
// a crash (the hook kills the process, or blocks), an error, or a pause
// while another process runs recovery.
type Failpoint string

// The failpoint catalogue, in protocol order. Per-branch failpoints fire
// once per branch with the branch's resource name; the others with the
// primary's.
const (
	BeforePrepare Failpoint = "before-prepare" // per branch, before its vote
	AfterPrepare  Failpoint = "after-prepare"  // per branch, after a successful vote
	BeforeDecide  Failpoint = "before-decide"  // every branch prepared, before the commit point
	AfterDecide   Failpoint = "after-decide"   // the precommit row at the primary is in
	// AfterBatch: a batch of marker rows (WithBatching: decision or
	// pre-commit rows of one or more transactions) is in, its answers not
	// yet handed out. gtid is the batch's gtids, comma-separated; resource
	// the batch's. An error injected here is a lost answer.
	AfterBatch      Failpoint = "after-batch"
	BeforePreCommit Failpoint = "before-precommit" // 3PC, per non-primary participant
	AfterPreCommit  Failpoint = "after-precommit"  // 3PC, per non-primary participant
	BeforeCommit    Failpoint = "before-commit"    // per branch
	AfterCommit     Failpoint = "after-commit"     // per branch
	BeforeCleanup   Failpoint = "before-cleanup"   // every branch committed, markers not yet deleted
	AfterCleanup    Failpoint = "after-cleanup"    // markers deleted
	BeforeRollback  Failpoint = "before-rollback"  // per branch, on the abort path
	AfterRollback   Failpoint = "after-rollback"   // per branch, on the abort path
	BeforeOnePhase  Failpoint = "before-one-phase" // single-participant commit
)

// catalogue is every failpoint in protocol order.
var catalogue = [...]Failpoint{
	BeforePrepare, AfterPrepare, BeforeDecide, AfterBatch, AfterDecide,
	BeforePreCommit, AfterPreCommit, BeforeCommit, AfterCommit,
	BeforeCleanup, AfterCleanup, BeforeRollback, AfterRollback, BeforeOnePhase,
}

// Failpoints returns the catalogue in protocol order, a new slice on
// every call.
func Failpoints() []Failpoint { return slices.Clone(catalogue[:]) }

// FailpointFunc is called at every failpoint when set with WithFailpoints.
// A non-nil error is injected as that step's failure, as if the database
// had returned it. gtid names the transaction, resource the branch.
type FailpointFunc func(ctx context.Context, fp Failpoint, gtid, resource string) error

func (m *Manager) failpoint(ctx context.Context, fp Failpoint, gtid, res string) error {
	if m.opts.failpoint == nil {
		return nil
	}
	return m.opts.failpoint(ctx, fp, gtid, res)
}
