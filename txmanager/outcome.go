package txmanager

import "errors"

// Outcome is what an error from Commit or Run says happened to the
// transaction. OutcomeOf classifies an error; callers switch on it
// instead of chaining errors.Is.
type Outcome uint8

// The outcomes, in the order of the threepc.outcome attribute's values.
const (
	// OutcomeCommitted: nil; every branch committed.
	OutcomeCommitted Outcome = iota
	// OutcomeAborted: ErrAborted; nothing committed and nothing will.
	// Safe to retry.
	OutcomeAborted
	// OutcomeInDoubt: ErrInDoubt; recovery will finish the transaction
	// one way. Do not retry blindly.
	OutcomeInDoubt
	// OutcomeCommitPending: ErrCommitPending; decided to commit,
	// recovery commits the rest. Do not retry.
	OutcomeCommitPending
	// OutcomeHeuristic: ErrHeuristic; decided to commit, a branch
	// contradicts it. Needs an operator.
	OutcomeHeuristic
	// OutcomeOther: none of the above: ErrTxDone, or an error that did
	// not come from Commit or Run.
	OutcomeOther
)

var outcomeNames = [...]string{"committed", "aborted", "in_doubt", "commit_pending", "heuristic", "other"}

func (o Outcome) String() string {
	if int(o) < len(outcomeNames) {
		return outcomeNames[o]
	}
	return "invalid"
}

// OutcomeOf classifies an error from Commit or Run. Every such error
// matches exactly one outcome class (see ErrAborted), so the order of the
// checks matters only for errors built elsewhere that wrap several.
func OutcomeOf(err error) Outcome {
	switch {
	case err == nil:
		return OutcomeCommitted
	case errors.Is(err, ErrHeuristic):
		return OutcomeHeuristic
	case errors.Is(err, ErrCommitPending):
		return OutcomeCommitPending
	case errors.Is(err, ErrInDoubt):
		return OutcomeInDoubt
	case errors.Is(err, ErrAborted):
		return OutcomeAborted
	}
	return OutcomeOther
}
