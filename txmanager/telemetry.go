package txmanager

import (
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

// telemetryOutcome is o as the threepc.outcome attribute: an error that
// is no outcome of ours (ErrTxDone) counts as aborted.
func telemetryOutcome(o Outcome) tracing.Outcome {
	switch o {
	case OutcomeCommitted:
		return tracing.OutcomeCommitted
	case OutcomeInDoubt:
		return tracing.OutcomeInDoubt
	case OutcomeCommitPending:
		return tracing.OutcomeCommitPending
	case OutcomeHeuristic:
		return tracing.OutcomeHeuristic
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
