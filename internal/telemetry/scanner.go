package telemetry

import (
	"context"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"

	"github.com/threepc/threepc/tracing"
)

// Scanner is the instrumentation of one recovery.Scanner. It is safe for
// concurrent use.
type Scanner struct {
	base
	scans   metric.Int64Counter
	actions metric.Int64Counter
	inDoubt metric.Int64Gauge
	oldest  metric.Float64Gauge
	other   metric.Int64Gauge
	otherAt metric.Float64Gauge
}

// NewScanner returns the instrumentation of a recovery scanner. Nil
// providers mean the otel globals.
func NewScanner(tp trace.TracerProvider, mp metric.MeterProvider) *Scanner {
	s := &Scanner{}
	s.init(tp, nil)
	meter := meterOf(mp)
	var err error
	if s.scans, err = meter.Int64Counter("threepc.recovery.scans",
		metric.WithDescription("Recovery scans, by result."),
		metric.WithUnit("{scan}")); err != nil {
		otel.Handle(err)
		s.scans = noop.Int64Counter{}
	}
	if s.actions, err = meter.Int64Counter("threepc.recovery.actions",
		metric.WithDescription("What recovery did to global transactions, by action."),
		metric.WithUnit("{transaction}")); err != nil {
		otel.Handle(err)
		s.actions = noop.Int64Counter{}
	}
	if s.inDoubt, err = meter.Int64Gauge("threepc.indoubt.transactions",
		metric.WithDescription("Transactions that the last recovery scan left needing work, with an unfinished branch (or the primary) on the resource."),
		metric.WithUnit("{transaction}")); err != nil {
		otel.Handle(err)
		s.inDoubt = noop.Int64Gauge{}
	}
	if s.oldest, err = meter.Float64Gauge("threepc.indoubt.oldest_age",
		metric.WithDescription("Age of the oldest transaction that the last recovery scan left needing work on the resource; 0 when none."),
		metric.WithUnit("s")); err != nil {
		otel.Handle(err)
		s.oldest = noop.Float64Gauge{}
	}
	if s.other, err = meter.Int64Gauge("threepc.prepared.other.transactions",
		metric.WithDescription("Prepared transactions of other software on the resource's server, which recovery leaves alone: forgotten, they hold locks and, on PostgreSQL, hold back VACUUM."),
		metric.WithUnit("{transaction}")); err != nil {
		otel.Handle(err)
		s.other = noop.Int64Gauge{}
	}
	if s.otherAt, err = meter.Float64Gauge("threepc.prepared.other.oldest_age",
		metric.WithDescription("Age of the oldest prepared transaction of other software on the resource's server (PostgreSQL; 0 where the server records no time, and when none)."),
		metric.WithUnit("s")); err != nil {
		otel.Handle(err)
		s.otherAt = noop.Float64Gauge{}
	}
	return s
}

// ScanSpan is the span of one scan. The zero ScanSpan is a valid no-op.
type ScanSpan struct {
	s    *Scanner
	span trace.Span
}

// StartScan starts a scan's span as a child of the span in ctx.
func (s *Scanner) StartScan(ctx context.Context, dryRun bool) (context.Context, ScanSpan) {
	if s == nil {
		return ctx, ScanSpan{}
	}
	ctx, span := s.start(ctx, tracing.ScanSpanName, internalSpan)
	if span != nil && span.IsRecording() {
		span.SetAttributes(tracing.KeyDryRun.Bool(dryRun))
	}
	return ctx, ScanSpan{s: s, span: span}
}

// ResourceInDoubt is one resource's in-doubt figures after a scan.
type ResourceInDoubt struct {
	Resource string
	Count    int
	Oldest   time.Duration // 0 when Count is 0
}

// ScanResult is what a scan found, for its span and the metrics.
type ScanResult struct {
	Resources     []string // every resource of the scanner
	Unreachable   []string // resources that could not be scanned
	Transactions  int      // global transactions found
	InDoubt       int      // of which still need work
	OldestInDoubt time.Duration
	// PerResource feeds the in-doubt gauges. Resources that could not be
	// scanned are left out: their gauges keep the last value seen.
	PerResource []ResourceInDoubt
	// OtherPrepared feeds the gauges of other software's prepared
	// transactions, for the resources that could list them.
	OtherPrepared []ResourceInDoubt
	Err           error // the scan could not run
}

// End ends the scan's span and records the scan's metrics.
func (sp ScanSpan) End(r ScanResult) {
	s := sp.s
	if s == nil {
		return
	}
	ctx := context.Background()
	result := tracing.ResultOK
	switch {
	case r.Err != nil:
		result = tracing.ResultError
	case len(r.Unreachable) > 0 || r.InDoubt > 0:
		result = tracing.ResultIncomplete
	}
	s.scans.Add(ctx, 1, metric.WithAttributes(tracing.KeyResult.String(result)))
	for _, pr := range r.PerResource {
		attrs := metric.WithAttributes(tracing.KeyResource.String(pr.Resource))
		s.inDoubt.Record(ctx, int64(pr.Count), attrs)
		s.oldest.Record(ctx, pr.Oldest.Seconds(), attrs)
	}
	for _, pr := range r.OtherPrepared {
		attrs := metric.WithAttributes(tracing.KeyResource.String(pr.Resource))
		s.other.Record(ctx, int64(pr.Count), attrs)
		s.otherAt.Record(ctx, pr.Oldest.Seconds(), attrs)
	}
	if sp.span == nil {
		return
	}
	if sp.span.IsRecording() {
		sp.span.SetAttributes(
			tracing.KeyResult.String(result),
			tracing.KeyResources.StringSlice(r.Resources),
			tracing.KeyTransactions.Int(r.Transactions),
			tracing.KeyInDoubt.Int(r.InDoubt),
			tracing.KeyOldestInDoubt.Float64(r.OldestInDoubt.Seconds()),
		)
		if len(r.Unreachable) > 0 {
			sp.span.SetAttributes(tracing.KeyUnreachable.StringSlice(r.Unreachable))
		}
		if r.Err != nil {
			s.recordError(sp.span, r.Err)
		}
	}
	sp.span.End()
}

// ResolveSpan is the span of one global transaction handled by a scan.
// The zero ResolveSpan is a valid no-op.
type ResolveSpan struct {
	s    *Scanner
	span trace.Span
}

// StartResolve starts the span of one gtid's resolution under the scan's
// span in ctx.
func (s *Scanner) StartResolve(ctx context.Context, gtid string) (context.Context, ResolveSpan) {
	if s == nil {
		return ctx, ResolveSpan{}
	}
	ctx, span := s.start(ctx, tracing.ResolveSpanName, internalSpan)
	if span != nil && span.IsRecording() {
		span.SetAttributes(tracing.KeyGTID.String(gtid))
	}
	return ctx, ResolveSpan{s: s, span: span}
}

// actionInDoubt is recovery.ActionInDoubt (this package cannot import
// recovery).
const actionInDoubt = "in-doubt"

// actionHeuristic is recovery.ActionHeuristic.
const actionHeuristic = "heuristic"

// Resolution is what a scan did for one global transaction.
type Resolution struct {
	Action       string // recovery.Action
	Reason       string
	Primary      string
	Participants []string
	Age          time.Duration
	Branches     int // prepared branches found
	BranchesDone int // of which finished by this scan
	DryRun       bool
	Err          error // why the transaction is not resolved, if it is not
}

// End ends the span and, unless it was a dry run, counts the action.
func (rs ResolveSpan) End(r Resolution) {
	s := rs.s
	if s == nil {
		return
	}
	if !r.DryRun {
		s.actions.Add(context.Background(), 1, metric.WithAttributes(tracing.KeyAction.String(r.Action)))
	}
	if rs.span == nil {
		return
	}
	if rs.span.IsRecording() {
		rs.span.SetAttributes(
			tracing.KeyAction.String(r.Action),
			tracing.KeyReason.String(r.Reason),
			tracing.KeyPrimary.String(r.Primary),
			tracing.KeyParticipants.StringSlice(r.Participants),
			tracing.KeyAge.Float64(r.Age.Seconds()),
			tracing.KeyBranches.Int(r.Branches),
			tracing.KeyBranchesDone.Int(r.BranchesDone),
		)
		switch {
		case r.Err != nil:
			s.recordError(rs.span, r.Err)
		case r.Action == actionInDoubt:
			rs.span.SetAttributes(keyErrorType.String("in_doubt"))
			rs.span.SetStatus(codes.Error, r.Reason)
		case r.Action == actionHeuristic:
			rs.span.SetAttributes(keyErrorType.String("heuristic"))
			rs.span.SetStatus(codes.Error, r.Reason)
		}
	}
	rs.span.End()
}
