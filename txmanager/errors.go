package txmanager

import (
	"errors"
	"fmt"
	"strings"

	"github.com/threepc/threepc/resource"
)

// Outcome errors. Every error from Commit and Run matches exactly one of
// ErrAborted, ErrInDoubt, ErrCommitPending or ErrHeuristic with
// errors.Is, or is ErrTxDone.
var (
	// ErrAborted: the transaction is rolled back, or will be: no branch
	// committed and none ever will. Safe to retry as a new transaction.
	ErrAborted = errors.New("threepc: transaction aborted")
	// ErrInDoubt: the coordinator could not learn whether the decision
	// (the commit point) was recorded. Recovery will finish the
	// transaction, one way for every branch. Do not retry blindly.
	ErrInDoubt = errors.New("threepc: transaction outcome in doubt")
	// ErrCommitPending: the transaction is decided to commit, but some
	// branches could not be committed in time; recovery will commit them.
	// The outcome is commit: do not retry.
	ErrCommitPending = errors.New("threepc: transaction committed, completion pending")

	// ErrHeuristic: the transaction is decided to commit, but a branch's
	// state contradicts the decision: the prepared branch is gone without
	// the evidence of its commit (rolled back by something outside
	// threepc, or lost by the database server, as in MariaDB's hand-over
	// race). The other branches are committed or will be; the marker rows
	// stay, so recovery commits the branch if it reappears (for MariaDB:
	// restart the server, then run recovery). Needs an operator: `threepc
	// inspect` shows it. Do not retry.
	ErrHeuristic = errors.New("threepc: heuristic outcome: a branch contradicts the commit decision")

	// ErrTimeout: the transaction timeout expired (WithTimeout). It is
	// what breaks distributed deadlocks, which neither database can see.
	// Returned wrapped in an AbortError.
	ErrTimeout = errors.New("threepc: transaction timeout")
	// ErrFenced: recovery fenced the transaction (an abort row at the
	// primary) before the coordinator could decide. Returned wrapped in an
	// AbortError.
	ErrFenced = errors.New("threepc: transaction fenced by recovery")
	// ErrDecisionDeadline: the decision deadline passed before the commit
	// point; the coordinator refuses to decide so late. Wrapped in an
	// AbortError.
	ErrDecisionDeadline = errors.New("threepc: decision deadline passed")

	// ErrTxDone: the transaction was already committed or rolled back.
	ErrTxDone = errors.New("threepc: transaction has already been committed or rolled back")
	// ErrUnknownResource: Tx.DB named a resource the manager does not have.
	ErrUnknownResource = errors.New("threepc: unknown resource")
)

// AbortError reports an aborted transaction: which branch failed, in
// which phase, and why. errors.Is(err, ErrAborted) holds for it.
type AbortError struct {
	GTID     string
	Resource string // the branch that caused the abort; empty if none did
	Phase    resource.Phase
	Err      error // the cause
}

func (e *AbortError) Error() string {
	var b strings.Builder
	b.WriteString("threepc: transaction ")
	b.WriteString(e.GTID)
	b.WriteString(" aborted in ")
	b.WriteString(string(e.Phase))
	if e.Resource != "" {
		fmt.Fprintf(&b, " by %q", e.Resource)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *AbortError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrAborted) hold.
func (e *AbortError) Is(target error) bool { return target == ErrAborted }

// InDoubtError reports that the decision's outcome is unknown.
// errors.Is(err, ErrInDoubt) holds for it.
type InDoubtError struct {
	GTID    string
	Primary string
	Err     error // the last error seen while deciding
}

func (e *InDoubtError) Error() string {
	return fmt.Sprintf("threepc: transaction %s in doubt: decision at %q unknown (recovery will finish it): %v", e.GTID, e.Primary, e.Err)
}

func (e *InDoubtError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrInDoubt) hold.
func (e *InDoubtError) Is(target error) bool { return target == ErrInDoubt }

// CommitPendingError reports a transaction decided to commit whose
// branches on Pending could not be committed within the commit timeout.
// errors.Is(err, ErrCommitPending) holds for it.
type CommitPendingError struct {
	GTID    string
	Pending []string
	Err     error // the branches' errors, joined
}

func (e *CommitPendingError) Error() string {
	return fmt.Sprintf("threepc: transaction %s committed, completion pending on %s (recovery will finish it): %v", e.GTID, strings.Join(e.Pending, ", "), e.Err)
}

func (e *CommitPendingError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrCommitPending) hold.
func (e *CommitPendingError) Is(target error) bool { return target == ErrCommitPending }

// HeuristicError reports a transaction decided to commit whose branches
// on Branches contradict that decision (see ErrHeuristic).
// errors.Is(err, ErrHeuristic) holds for it.
type HeuristicError struct {
	GTID     string
	Branches []string // the branches gone without their evidence
	Pending  []string // branches not committed in time (recovery finishes them)
	Err      error    // the branches' errors, joined
}

func (e *HeuristicError) Error() string {
	return fmt.Sprintf("threepc: transaction %s decided to commit, but branch %s is gone without the evidence of its commit (rolled back outside threepc, or lost by the server; markers kept, see `threepc inspect`): %v", e.GTID, strings.Join(e.Branches, ", "), e.Err)
}

func (e *HeuristicError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrHeuristic) hold.
func (e *HeuristicError) Is(target error) bool { return target == ErrHeuristic }
