package txmanager

import (
	"github.com/threepc/threepc/internal/telemetry"
)

// errorTypes name the coordinator's causes for the error.type attribute.
// The outcome classes (ErrAborted, ...) are left out on purpose: the
// outcome is its own attribute, and error.type should say why.
var errorTypes = []telemetry.ErrorType{
	{Err: ErrTimeout, Name: "timeout"},
	{Err: ErrFenced, Name: "fenced"},
	{Err: ErrDecisionDeadline, Name: "decision_deadline"},
	{Err: ErrUnknownResource, Name: "unknown_resource"},
}

func newTelemetry(o options) *telemetry.Coordinator {
	return telemetry.NewCoordinator(o.tracerProvider, o.meterProvider, string(o.protocol), errorTypes...)
}

// telemetryOutcome is o as the threepc.outcome attribute: an error that
// is no outcome of ours (ErrTxDone) counts as aborted.
func telemetryOutcome(o Outcome) telemetry.Outcome {
	switch o {
	case OutcomeCommitted:
		return telemetry.OutcomeCommitted
	case OutcomeInDoubt:
		return telemetry.OutcomeInDoubt
	case OutcomeCommitPending:
		return telemetry.OutcomeCommitPending
	case OutcomeHeuristic:
		return telemetry.OutcomeHeuristic
	}
	return telemetry.OutcomeAborted
}

// endTelemetry ends the transaction's span and records its metrics.
func (tx *Tx) endTelemetry(outcome telemetry.Outcome, err error) {
	if tx.tel.Recording() {
		tx.mu.Lock()
		primary := tx.primary
		tx.mu.Unlock()
		tx.tel.SetParticipants(primary, tx.Participants())
	}
	tx.tel.End(outcome, err)
}
