package telemetry

import (
	"context"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"

	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/tracing"
)

// Outcome is how a transaction ended, the threepc.outcome attribute.
type Outcome uint8

// The outcomes.
const (
	OutcomeCommitted     Outcome = iota // every branch committed (or every branch was read-only, or none was enlisted)
	OutcomeAborted                      // rolled back: an abort, or the caller's Rollback
	OutcomeInDoubt                      // the decision's outcome is unknown; recovery will finish it
	OutcomeCommitPending                // decided to commit; recovery will commit the rest
	OutcomeHeuristic                    // decided to commit; a branch contradicts the decision
	numOutcomes
)

var outcomeNames = [numOutcomes]string{"committed", "aborted", "in_doubt", "commit_pending", "heuristic"}

func (o Outcome) String() string {
	if o < numOutcomes {
		return outcomeNames[o]
	}
	return "invalid"
}

// spanPhases are the phases that get a span (and a threepc.phase.duration
// series), each named "threepc." + the phase: the protocol's phases
// except begin and work, which are the caller's.
var spanPhases = [...]resource.Phase{
	resource.PhasePrepare, resource.PhaseDecide, resource.PhasePreCommit, resource.PhaseCommit,
	resource.PhaseRollback, resource.PhaseCleanup, resource.PhaseCommitOnePhase,
}

const numPhases = len(spanPhases)

// phaseSlot is the index of p in spanPhases, or -1.
func phaseSlot(p resource.Phase) int {
	for i, q := range spanPhases {
		if q == p {
			return i
		}
	}
	return -1
}

var phaseSpanNames = func() (s [numPhases]string) {
	for i, p := range spanPhases {
		s[i] = tracing.PhaseSpanPrefix + string(p)
	}
	return s
}()

// Coordinator is the instrumentation of one txmanager.Manager. It is safe
// for concurrent use.
type Coordinator struct {
	base
	protocol   attribute.KeyValue
	txCount    metric.Int64Counter
	txDuration metric.Float64Histogram
	phaseDur   metric.Float64Histogram
	// Option slices, not single options: a variadic call through an
	// interface would allocate its slice on every call.
	outcomeAdd [numOutcomes][]metric.AddOption
	outcomeRec [numOutcomes][]metric.RecordOption
	phaseRec   [numPhases][]metric.RecordOption
}

// durationBuckets suits both sub-millisecond in-memory runs and
// multi-second commits over a WAN.
var durationBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

// NewCoordinator returns the instrumentation of a coordinator running
// protocol ("3pc" or "2pc"). Nil providers mean the otel globals.
// errorTypes name the coordinator's own sentinels for error.type; they are
// tried before the resource package's.
func NewCoordinator(tp trace.TracerProvider, mp metric.MeterProvider, protocol string, errorTypes ...ErrorType) *Coordinator {
	c := &Coordinator{protocol: tracing.KeyProtocol.String(protocol)}
	c.init(tp, errorTypes)
	meter := meterOf(mp)
	var err error
	if c.txCount, err = meter.Int64Counter("threepc.transactions",
		metric.WithDescription("Distributed transactions ended, by outcome and protocol."),
		metric.WithUnit("{transaction}")); err != nil {
		otel.Handle(err)
		c.txCount = noop.Int64Counter{}
	}
	if c.txDuration, err = meter.Float64Histogram("threepc.transaction.duration",
		metric.WithDescription("Time from Begin to the end of Commit or Rollback."),
		metric.WithUnit("s"), metric.WithExplicitBucketBoundaries(durationBuckets...)); err != nil {
		otel.Handle(err)
		c.txDuration = noop.Float64Histogram{}
	}
	if c.phaseDur, err = meter.Float64Histogram("threepc.phase.duration",
		metric.WithDescription("Duration of one protocol phase of one transaction."),
		metric.WithUnit("s"), metric.WithExplicitBucketBoundaries(durationBuckets...)); err != nil {
		otel.Handle(err)
		c.phaseDur = noop.Float64Histogram{}
	}
	// Attribute sets are built once so that recording allocates nothing.
	for o := range numOutcomes {
		set := attribute.NewSet(tracing.KeyOutcome.String(o.String()), c.protocol)
		c.outcomeAdd[o] = []metric.AddOption{metric.WithAttributeSet(set)}
		c.outcomeRec[o] = []metric.RecordOption{metric.WithAttributeSet(set)}
	}
	for i, p := range spanPhases {
		c.phaseRec[i] = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(tracing.KeyPhase.String(string(p)), c.protocol))}
	}
	return c
}

// Txn is the instrumentation of one transaction. The zero Txn (from a nil
// Coordinator) is a valid no-op. A Txn is not safe for concurrent use
// except for Context and the Phase and Op methods.
type Txn struct {
	c     *Coordinator
	span  trace.Span
	start time.Time
	ended bool
}

// Start starts a transaction's span as a child of the span in ctx.
func (c *Coordinator) Start(ctx context.Context, gtid string) Txn {
	if c == nil {
		return Txn{}
	}
	_, span := c.start(ctx, tracing.TransactionSpanName, internalSpan)
	if span != nil && span.IsRecording() {
		span.SetAttributes(tracing.KeyGTID.String(gtid), c.protocol)
	}
	return Txn{c: c, span: span, start: time.Now()}
}

// Context returns ctx with the transaction's span as the current span, so
// that spans started from it are the transaction's children.
func (t *Txn) Context(ctx context.Context) context.Context {
	if t.span == nil || !t.span.SpanContext().IsValid() {
		return ctx // nothing to parent to
	}
	if sc := trace.SpanContextFromContext(ctx); sc.SpanID() == t.span.SpanContext().SpanID() &&
		sc.TraceID() == t.span.SpanContext().TraceID() {
		return ctx // already there (and no allocation when tracing is off)
	}
	return trace.ContextWithSpan(ctx, t.span)
}

// SetParticipants records the participants (in enlistment order) and the
// primary.
func (t *Txn) SetParticipants(primary string, participants []string) {
	if t.span == nil || !t.span.IsRecording() {
		return
	}
	t.span.SetAttributes(tracing.KeyPrimary.String(primary), tracing.KeyParticipants.StringSlice(participants))
}

// End ends the transaction's span and records its metrics. err is what
// Commit or Rollback returned (nil for success); it sets the span's status
// and error.type. End is idempotent.
func (t *Txn) End(outcome Outcome, err error) {
	if t.c == nil || t.ended {
		return
	}
	t.ended = true
	c := t.c
	ctx := context.Background()
	c.txCount.Add(ctx, 1, c.outcomeAdd[outcome]...)
	c.txDuration.Record(ctx, time.Since(t.start).Seconds(), c.outcomeRec[outcome]...)
	if t.span == nil {
		return
	}
	if t.span.IsRecording() {
		t.span.SetAttributes(tracing.KeyOutcome.String(outcome.String()))
		if err != nil {
			c.recordError(t.span, err)
		}
	}
	t.span.End()
}

// PhaseSpan is the span of one phase. The zero PhaseSpan is a valid no-op.
type PhaseSpan struct {
	c     *Coordinator
	span  trace.Span
	slot  int // in spanPhases
	start time.Time
}

// Phase starts a phase's span. ctx should come from Txn.Context (the span
// is its current span's child); the returned context carries the phase's
// span, for the phase's Op spans.
func (t *Txn) Phase(ctx context.Context, p resource.Phase) (context.Context, PhaseSpan) {
	slot := phaseSlot(p)
	if t.c == nil || slot < 0 {
		return ctx, PhaseSpan{}
	}
	if t.span == nil || !t.span.IsRecording() {
		// Not sampled (or no SDK): the phase's span would not be either,
		// with the parent-based samplers OpenTelemetry recommends; skip
		// it, and the allocations of a span nobody records.
		return ctx, PhaseSpan{c: t.c, slot: slot, start: time.Now()}
	}
	ctx = t.Context(ctx)
	ctx, span := t.c.start(ctx, phaseSpanNames[slot], internalSpan)
	return ctx, PhaseSpan{c: t.c, span: span, slot: slot, start: time.Now()}
}

// End ends the phase, recording err as the span's status and error.type,
// and its duration.
func (p PhaseSpan) End(err error) {
	if p.c == nil {
		return
	}
	p.c.phaseDur.Record(context.Background(), time.Since(p.start).Seconds(), p.c.phaseRec[p.slot]...)
	if p.span == nil {
		return
	}
	if err != nil && p.span.IsRecording() {
		p.c.recordError(p.span, err)
	}
	p.span.End()
}

// Recording reports whether the transaction's span records, so that
// callers can skip building attribute values nobody will see.
func (t *Txn) Recording() bool { return t.span != nil && t.span.IsRecording() }
