package recovery

import (
	"time"

	"github.com/threepc/threepc/resource"
)

// Action is what a scan did (or, for Inspect, would do) to a transaction.
type Action string

// Actions.
const (
	ActionCommit   Action = "commit"   // precommit row found: prepared branches committed
	ActionRollback Action = "rollback" // abort row at the primary: prepared branches rolled back
	ActionFence    Action = "fence"    // no row: abort row inserted at the primary, branches rolled back
	ActionCollect  Action = "collect"  // no prepared branch left: marker rows deleted
	ActionWait     Action = "wait"     // younger than the horizon, or a tombstone kept for retention
	ActionInDoubt  Action = "in-doubt" // cannot be decided or finished now; see Reason
	// ActionHeuristic: a branch contradicts the decision (decided to
	// commit, but gone without its evidence; or committed under an abort
	// row). Nothing is claimed and every row is kept; Reason says what
	// to do.
	ActionHeuristic Action = "heuristic"
)

// BranchReport is one prepared branch found by a scan.
type BranchReport struct {
	Resource   string
	XID        resource.XID
	PreparedAt time.Time // zero when the database does not record it
	Done       bool      // finished by this scan
	Err        error     // why it could not be finished
}

// TxReport is what a scan found and did for one global transaction.
type TxReport struct {
	GTID         string
	Primary      string
	Participants []string // from the marker rows and the branches seen
	Age          time.Duration
	Branches     []BranchReport
	Markers      map[string]resource.Marker // by resource
	// Lost names the branches that contradict the decision (heuristic).
	Lost   []string
	Action Action
	Reason string
	Err    error

	lateDecision bool // the deciding row was read after the branch listing
	collect      bool // delete its rows at the end of the scan
	unproven     bool // some participant's commit is not proven yet (not an error: the next scan looks again)
}

// Resolved reports whether the transaction needs nothing more.
func (t *TxReport) Resolved() bool {
	if t.Action == ActionInDoubt || t.Action == ActionHeuristic || t.Err != nil || t.unproven {
		return false
	}
	for _, b := range t.Branches {
		if !b.Done {
			return false
		}
	}
	return true
}

// Report is the result of one scan.
type Report struct {
	Started      time.Time
	Duration     time.Duration
	DryRun       bool
	Unreachable  map[string]error // resources that could not be scanned
	Transactions []TxReport       // sorted by gtid (age order)
	// Foreign counts the prepared branches of other namespaces seen and
	// left alone.
	Foreign int
	// OtherPrepared is, per resource that can list its server's prepared
	// transactions (resource.ServerPreparedLister, both drivers), those of
	// other software, which recovery never touches: forgotten, they hold
	// their locks and, on PostgreSQL, hold back VACUUM server-wide.
	OtherPrepared map[string]OtherPrepared
}

// OtherPrepared counts the prepared transactions on a resource's server
// that are not threepc's.
type OtherPrepared struct {
	Count int
	// Oldest is the age of the oldest, where the server records when it
	// prepared them (PostgreSQL); 0 on MySQL and MariaDB.
	Oldest time.Duration
}

// InDoubt returns the transactions that still need work: in doubt,
// heuristic, not finished, or waiting on a young in-flight transaction's
// prepared branches.
func (r *Report) InDoubt() []TxReport {
	var out []TxReport
	for _, t := range r.Transactions {
		if t.Action == ActionInDoubt || t.Action == ActionHeuristic || t.Err != nil || (t.Action != ActionWait && !t.Resolved()) {
			out = append(out, t)
		}
	}
	return out
}

// Heuristic returns the transactions with a heuristic outcome.
func (r *Report) Heuristic() []TxReport {
	var out []TxReport
	for _, t := range r.Transactions {
		if t.Action == ActionHeuristic {
			out = append(out, t)
		}
	}
	return out
}

// OldestInDoubt returns the age of the oldest transaction that needs
// work, or 0.
func (r *Report) OldestInDoubt() time.Duration {
	var oldest time.Duration
	for _, t := range r.InDoubt() {
		oldest = max(oldest, t.Age)
	}
	return oldest
}
