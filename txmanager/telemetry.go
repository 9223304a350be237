package txmanager

import (
	"errors"

	"github.com/threepc/threepc/tracing"
)

// errorTypes name the coordinator's causes for the error.type attribute.
// The outcome classes (ErrAborted, ...) are left out on purpose: the
// outcome is its own attribute, and error.type should say why.
var errorTypes = []tracing.ErrorType{
	{Err: ErrTimeout, Name: "timeout"},
	{Err: ErrFenced, Name: "fenced"},
	{Err: ErrDecisionDeadline, Name: "decision_deadline"},
	{Err: ErrUnknownResource, Name: "unknown_resource"},
}

func newTelemetry(o options) *tracing.Coordinator {
	return tracing.NewCoordinator(o.tracerProvider, o.meterProvider, string(o.protocol), errorTypes...)
}

// outcomeOf classifies Commit's error.
func outcomeOf(err error) tracing.Outcome {
	switch {
	case err == nil:
		return tracing.OutcomeCommitted
	case errors.Is(err, ErrHeuristic):
		return tracing.OutcomeHeuristic
	case errors.Is(err, ErrCommitPending):
		return tracing.OutcomeCommitPending
	case errors.Is(err, ErrInDoubt):
		return tracing.OutcomeInDoubt
	}
	return tracing.OutcomeAborted
}

// endTelemetry ends the transaction's span and records its metrics.
func (tx *Tx) endTelemetry(outcome tracing.Outcome, err error) {
	if tx.tel.Recording() {
		tx.mu.Lock()
		primary := tx.primary
		tx.mu.Unlock()
		tx.tel.SetParticipants(primary, tx.Participants())
	}
	tx.tel.End(outcome, err)
}
