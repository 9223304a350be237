package txmanager_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/threepc/threepc/txmanager"
)

func TestOutcomeOf(t *testing.T) {
	cause := errors.New("cause")
	for _, c := range []struct {
		err  error
		want txmanager.Outcome
	}{
		{nil, txmanager.OutcomeCommitted},
		{txmanager.ErrAborted, txmanager.OutcomeAborted},
		{&txmanager.AbortError{Err: cause}, txmanager.OutcomeAborted},
		{fmt.Errorf("wrapped: %w", &txmanager.AbortError{Err: txmanager.ErrTimeout}), txmanager.OutcomeAborted},
		{&txmanager.InDoubtError{Err: cause}, txmanager.OutcomeInDoubt},
		{&txmanager.CommitPendingError{Err: cause}, txmanager.OutcomeCommitPending},
		{&txmanager.HeuristicError{Err: cause}, txmanager.OutcomeHeuristic},
		{txmanager.ErrTxDone, txmanager.OutcomeOther},
		{cause, txmanager.OutcomeOther},
	} {
		if got := txmanager.OutcomeOf(c.err); got != c.want {
			t.Errorf("OutcomeOf(%v) = %v, want %v", c.err, got, c.want)
		}
	}
	if s := txmanager.Outcome(200).String(); s != "invalid" {
		t.Errorf("Outcome(200) = %q", s)
	}
}

// ExampleOutcomeOf tells a caller what to do after Run.
func ExampleOutcomeOf() {
	err := fmt.Errorf("transfer 42: %w", &txmanager.CommitPendingError{GTID: "g1", Pending: []string{"maria"}})
	switch txmanager.OutcomeOf(err) {
	case txmanager.OutcomeCommitted, txmanager.OutcomeCommitPending:
		fmt.Println("done: tell the user it went through")
	case txmanager.OutcomeAborted:
		fmt.Println("nothing happened: safe to retry")
	case txmanager.OutcomeInDoubt, txmanager.OutcomeHeuristic:
		fmt.Println("unknown or contradicted: do not retry; recovery or an operator finishes it")
	default:
		fmt.Println("not a transaction outcome")
	}
	// Output: done: tell the user it went through
}
