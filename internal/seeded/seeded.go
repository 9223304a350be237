// Package seeded holds switches that plant known protocol bugs, so the
// model test can prove that its invariant checker catches them. Only
// tests set them; they are off in every build.
package seeded

import "sync/atomic"

// Bugs a test can plant.
var (
	// AbortWithoutFence: recovery rolls back an undecided transaction
	// without first inserting the abort row at the primary.
	AbortWithoutFence atomic.Bool
	// EarlyAbortCleanup: recovery deletes abort rows at once instead of
	// after the retention period.
	EarlyAbortCleanup atomic.Bool
	// EarlyPreCommit: the coordinator writes the non-primary precommit
	// rows before the decision at the primary.
	EarlyPreCommit atomic.Bool
	// CollectAfterLateDecision: recovery collects marker rows in a scan
	// that learned the decision only from its lost fence, after its branch
	// listing (a real bug, found by integration_test and fixed).
	CollectAfterLateDecision atomic.Bool
)

// Bugs of the first version, which the "Evidence, not absence" revision
// of PROTOCOL.md fixed; the model must catch each of them.
var (
	// TrustByIDCommit: a driver takes an OK to a by-id commit for proof
	// (MariaDB's hand-over race answers OK and commits nothing).
	TrustByIDCommit atomic.Bool
	// AbsenceIsCommit: a commit of a branch that is no longer prepared is
	// taken as done without its evidence.
	AbsenceIsCommit atomic.Bool
	// DeleteDecisionRow: the coordinator's clean-up and recovery delete
	// the primary's decision row once the branches are committed, instead
	// of keeping it as a tombstone for the retention period.
	DeleteDecisionRow atomic.Bool
	// FenceWithoutDeadline: a scan fences (and the coordinator's
	// logging-last-resource self-fence runs) whatever its own deadline.
	FenceWithoutDeadline atomic.Bool
)
