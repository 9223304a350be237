// Package seeded holds switches that plant known protocol bugs, so the
// model test can prove that its invariant checker catches them.
//
// The switches exist only in builds with the threepc_seeded tag, which
// the project's test command sets (scripts/test.sh); the tests that
// plant bugs are built only then. In every other build a switch's Load
// is a constant false that the compiler removes with the code it guards:
// nothing of it is left on the commit path.
package seeded

// Bugs a test can plant.
var (
	// AbortWithoutFence: recovery rolls back an undecided transaction
	// without first inserting the abort row at the primary.
	AbortWithoutFence Switch
	// EarlyAbortCleanup: recovery deletes abort rows at once instead of
	// after the retention period.
	EarlyAbortCleanup Switch
	// EarlyPreCommit: the coordinator writes the non-primary precommit
	// rows before the decision at the primary.
	EarlyPreCommit Switch
	// CollectAfterLateDecision: recovery collects marker rows in a scan
	// that learned the decision only from its lost fence, after its branch
	// listing (a real bug, found by integration_test and fixed).
	CollectAfterLateDecision Switch
	// OverlapEveryBranch: the coordinator overlaps the precommit rows and
	// the commits whenever the primary committed with its decision, also
	// with several branches left (safe only with one).
	OverlapEveryBranch Switch
)

// Bugs of the first version, which the "Evidence, not absence" revision
// of PROTOCOL.md fixed; the model must catch each of them.
var (
	// TrustByIDCommit: a driver takes an OK to a by-id commit for proof
	// (MariaDB's hand-over race answers OK and commits nothing).
	TrustByIDCommit Switch
	// AbsenceIsCommit: a commit of a branch that is no longer prepared is
	// taken as done without its evidence.
	AbsenceIsCommit Switch
	// DeleteDecisionRow: the coordinator's clean-up and recovery delete
	// the primary's decision row once the branches are committed, instead
	// of keeping it as a tombstone for the retention period.
	DeleteDecisionRow Switch
	// FenceWithoutDeadline: a scan fences (and the coordinator's
	// logging-last-resource self-fence runs) whatever its own deadline.
	FenceWithoutDeadline Switch
)
