// Package telemetry is the instrumentation behind package tracing: the
// spans and metrics that the coordinator (txmanager) and the recovery
// scanner (recovery) emit, under the names, attribute keys and scope that
// package tracing documents.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"reflect"
	"strconv"
	"sync"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/tracing"
)

// Semantic-convention attribute keys (kept here rather than importing a
// semconv package whose version would pin ours).
const (
	keyDBSystem     = attribute.Key("db.system.name")
	keyDBNamespace  = attribute.Key("db.namespace")
	keyDBOperation  = attribute.Key("db.operation.name")
	keyServerAddr   = attribute.Key("server.address")
	keyServerPort   = attribute.Key("server.port")
	keyDBStatusCode = attribute.Key("db.response.status_code")
	keyErrorType    = attribute.Key("error.type")
)

// Operation is a database call, the db.operation.name of its CLIENT span.
type Operation uint8

// The operations, one per resource.Resource / resource.Branch method that
// the protocol calls.
const (
	OpBegin            Operation = iota // Resource.Begin
	OpPrepare                           // Branch.Prepare
	OpCommit                            // Branch.Commit (with retries by id)
	OpCommitPrepared                    // Resource.CommitPrepared
	OpCommitOnePhase                    // Branch.CommitOnePhase
	OpRollback                          // Branch.Rollback (and RollbackPrepared as fallback)
	OpRollbackPrepared                  // Resource.RollbackPrepared
	OpInsertMarker                      // Resource.InsertMarker
	OpReadMarker                        // Resource.ReadMarker
	OpListMarkers                       // Resource.ListMarkers
	OpDeleteMarkers                     // Resource.DeleteMarkers
	OpRecover                           // Resource.Recover
	OpCommitWithMarker                  // resource.MarkerCommitter (logging last resource)
	OpTombstone                         // Resource.Tombstone
	OpCommitted                         // Resource.Committed (reading a branch's evidence)
	OpInsertMarkers                     // resource.MarkerBatcher (a batch of marker rows)
	numOps
)

var opNames = [numOps]string{
	"begin", "prepare", "commit", "commit_prepared", "commit_one_phase", "rollback",
	"rollback_prepared", "insert_marker", "read_marker", "list_markers", "delete_markers", "recover",
	"commit_with_marker", "tombstone", "committed", "insert_markers",
}

var opSpanNames = func() (s [numOps]string) {
	for i, n := range opNames {
		s[i] = tracing.BranchSpanPrefix + n
	}
	return s
}()

func (o Operation) String() string {
	if o < numOps {
		return opNames[o]
	}
	return "invalid"
}

// ErrorType names a sentinel error for the error.type attribute.
type ErrorType struct {
	Err  error
	Name string
}

var resourceErrorTypes = []ErrorType{
	{resource.ErrUnknownBranch, "unknown_branch"},
	{resource.ErrHeuristic, "heuristic"},
	{resource.ErrBranchExists, "branch_exists"},
	{resource.ErrPrepareRefused, "prepare_refused"},
	{resource.ErrBranchBusy, "branch_busy"},
	{resource.ErrTooManyPrepared, "too_many_prepared"},
	{resource.ErrMarkerExists, "marker_exists"},
	{resource.ErrNoMarker, "no_marker"},
	{resource.ErrPreparedTransactionsDisabled, "prepared_transactions_disabled"},
	{resource.ErrMissingPrivilege, "missing_privilege"},
	{resource.ErrMarkerTableMissing, "marker_table_missing"},
	{resource.ErrConnectionRejected, "connection_rejected"},
	{resource.ErrUnreachable, "unreachable"},
	{resource.ErrUnsupported, "unsupported"},
	{resource.ErrInvalidName, "invalid_name"},
	{resource.ErrInvalidID, "invalid_id"},
	{context.DeadlineExceeded, "context_deadline_exceeded"},
	{context.Canceled, "context_canceled"},
}

// ErrorTypeOf returns the error.type value of err (see the package
// documentation), trying extra sentinels first. It returns "" for nil.
func ErrorTypeOf(err error, extra ...ErrorType) string {
	if err == nil {
		return ""
	}
	for _, t := range extra {
		if errors.Is(err, t.Err) {
			return t.Name
		}
	}
	for _, t := range resourceErrorTypes {
		if errors.Is(err, t.Err) {
			return t.Name
		}
	}
	// The first error that is not a mere wrapper says what kind of failure
	// it was; *fmt.wrapError says nothing.
	for e := err; ; {
		if multi, ok := e.(interface{ Unwrap() []error }); ok {
			if errs := multi.Unwrap(); len(errs) > 0 && errs[0] != nil {
				e = errs[0]
				continue
			}
		}
		next := errors.Unwrap(e)
		if next == nil || reflect.TypeOf(e) != fmtWrapType {
			return reflect.TypeOf(e).String()
		}
		e = next
	}
}

var fmtWrapType = reflect.TypeOf(fmt.Errorf("%w", errors.New("")))

// StatusCodeOf returns the database status code carried by err's chain
// (resource.StatusCoder first, then resource.SQLStater), or "".
func StatusCodeOf(err error) string {
	if err == nil {
		return ""
	}
	var sc resource.StatusCoder
	if errors.As(err, &sc) {
		return sc.DBStatusCode()
	}
	var ss resource.SQLStater
	if errors.As(err, &ss) {
		return ss.SQLState()
	}
	return ""
}

// base holds what the coordinator's and the scanner's instrumentation
// share.
type base struct {
	tracer     trace.Tracer // nil: tracing off
	errorTypes []ErrorType
	resAttrs   sync.Map // resource name -> []attribute.KeyValue
}

func (b *base) init(tp trace.TracerProvider, errorTypes []ErrorType) {
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	b.errorTypes = errorTypes
	// With the API's no-op provider no span is ever started: even a no-op
	// span costs a context allocation (two lookups through a
	// context.WithoutCancel allocate too), and the commit path starts
	// about twenty.
	if _, noop := tp.(tracenoop.TracerProvider); !noop {
		b.tracer = tp.Tracer(tracing.ScopeName, trace.WithInstrumentationVersion(tracing.Version))
	}
}

// start starts a span, or returns a nil span when tracing is off.
func (b *base) start(ctx context.Context, name string, opts []trace.SpanStartOption) (context.Context, trace.Span) {
	if b.tracer == nil {
		return ctx, nil
	}
	return b.tracer.Start(ctx, name, opts...)
}

func meterOf(mp metric.MeterProvider) metric.Meter {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	return mp.Meter(tracing.ScopeName, metric.WithInstrumentationVersion(tracing.Version))
}

var (
	clientSpan   = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindClient)}
	internalSpan = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindInternal)}
)

// resourceAttrs returns the per-resource attributes of a database call,
// computed once per resource name.
func (b *base) resourceAttrs(r resource.Resource) []attribute.KeyValue {
	name := r.Name()
	if v, ok := b.resAttrs.Load(name); ok {
		return v.([]attribute.KeyValue)
	}
	ns := name
	if dn, ok := r.(resource.DatabaseNamer); ok && dn.DatabaseName() != "" {
		ns = dn.DatabaseName()
	}
	attrs := []attribute.KeyValue{
		keyDBSystem.String(r.System()),
		keyDBNamespace.String(ns),
		tracing.KeyResource.String(name),
	}
	if sa, ok := r.(resource.ServerAddresser); ok {
		if addr := sa.ServerAddress(); addr != "" {
			host, port, err := net.SplitHostPort(addr)
			if err != nil {
				attrs = append(attrs, keyServerAddr.String(addr))
			} else {
				attrs = append(attrs, keyServerAddr.String(host))
				if p, err := strconv.Atoi(port); err == nil {
					attrs = append(attrs, keyServerPort.Int(p))
				}
			}
		}
	}
	v, _ := b.resAttrs.LoadOrStore(name, attrs)
	return v.([]attribute.KeyValue)
}

// OpSpan is the CLIENT span of one database call. The zero OpSpan is a
// valid no-op.
type OpSpan struct {
	span trace.Span
	b    *base
}

// startOp starts the CLIENT span of a call of op on r, as a child of the
// span in ctx. The caller passes the returned context to the call, so that
// a driver's own instrumentation nests under it.
func (b *base) startOp(ctx context.Context, op Operation, r resource.Resource) (context.Context, OpSpan) {
	if b == nil || b.tracer == nil || !trace.SpanFromContext(ctx).IsRecording() {
		// A database call is always a child of a transaction's or a
		// scan's span: unsampled there, unsampled here (parent-based
		// sampling), so no span at all.
		return ctx, OpSpan{}
	}
	ctx, span := b.start(ctx, opSpanNames[op], clientSpan)
	if span == nil {
		return ctx, OpSpan{}
	}
	if span.IsRecording() {
		span.SetAttributes(b.resourceAttrs(r)...)
		span.SetAttributes(keyDBOperation.String(opNames[op]))
	}
	return ctx, OpSpan{span: span, b: b}
}

// Vote records a prepare's vote.
func (s OpSpan) Vote(v resource.Vote) {
	if s.span == nil || !s.span.IsRecording() {
		return
	}
	switch v {
	case resource.VotePrepared:
		s.span.SetAttributes(tracing.KeyVote.String("prepared"))
	case resource.VoteReadOnly:
		s.span.SetAttributes(tracing.KeyVote.String("read_only"))
	}
}

// End ends the span, recording err (status Error, error.type,
// db.response.status_code).
func (s OpSpan) End(err error) {
	if s.span == nil {
		return
	}
	if err != nil && s.span.IsRecording() {
		s.b.recordError(s.span, err)
	}
	s.span.End()
}

func (b *base) recordError(span trace.Span, err error) {
	et := ErrorTypeOf(err, b.errorTypes...)
	attrs := []attribute.KeyValue{keyErrorType.String(et)}
	if code := StatusCodeOf(err); code != "" {
		attrs = append(attrs, keyDBStatusCode.String(code))
	}
	span.SetAttributes(attrs...)
	span.SetStatus(codes.Error, err.Error())
}

// Retry records a retry of the operation in ctx's span, as a "retry"
// event with the attempt number (1 for the first retry) and the error
// that caused it.
func Retry(ctx context.Context, attempt int, err error) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	attrs := []attribute.KeyValue{tracing.KeyAttempt.Int(attempt)}
	if err != nil {
		attrs = append(attrs, keyErrorType.String(ErrorTypeOf(err)), attribute.String("exception.message", err.Error()))
	}
	span.AddEvent("retry", trace.WithAttributes(attrs...))
}
