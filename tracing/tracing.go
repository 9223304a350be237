// Package tracing is threepc's OpenTelemetry instrumentation: the spans
// and metrics that the coordinator (txmanager) and the recovery scanner
// (recovery) emit. Users do not call it; they pass
// txmanager.WithTracerProvider / WithMeterProvider (and the same options of
// package recovery), which default to the otel globals.
//
// It depends on the OpenTelemetry API only. Programs that want to export
// install SDK providers themselves, or call tracing/otlpsetup, which reads
// the standard OTEL_EXPORTER_OTLP_* variables (library code never does).
//
// # Spans
//
// A transaction is one INTERNAL span, "threepc.transaction", started at
// Begin as a child of Begin's context (so it sits inside the request trace
// that started it) and ended by Commit or Rollback; Manager.Run hands its
// function a context carrying it, so the caller's own spans nest inside.
// Attributes: threepc.gtid, threepc.protocol, threepc.primary,
// threepc.participants (enlistment order) and threepc.outcome (committed,
// aborted, in_doubt, commit_pending); status Error and error.type when
// Commit fails. Its children are one INTERNAL span per protocol phase run:
//
//	threepc.prepare, threepc.decide, threepc.precommit (3PC only),
//	threepc.commit, threepc.rollback (the abort path and Rollback),
//	threepc.cleanup, threepc.commit_one_phase (single participant)
//
// Under the phases (and under the transaction for the branch's begin),
// every call into a participant database is a CLIENT span named
// "threepc.branch.<operation>", with <operation> one of the Operation
// values: begin, prepare, commit, commit_prepared, commit_one_phase,
// rollback, rollback_prepared, insert_marker, read_marker, list_markers,
// delete_markers, recover, commit_with_marker. Commit retries are "retry"
// events on the branch's commit span; decision retries are "retry"
// events on threepc.decide.
//
// A recovery scan is "threepc.recovery.scan" (threepc.recovery.result,
// .resources, .transactions, .in_doubt, .oldest_in_doubt, .unreachable,
// .dry_run); each global transaction it handled is a child
// "threepc.recovery.resolve" (threepc.gtid, threepc.primary,
// threepc.participants, threepc.recovery.action, .reason, .age in seconds,
// .branches, .branches_done; status Error when left in doubt), and the
// database calls are threepc.branch.* CLIENT spans below them.
//
// With the API's no-op tracer provider (trace/noop) no span is started at
// all, and metric recording allocates nothing: instrumentation is free
// when it is off.
//
// # Attributes
//
// Database calls carry the semantic-convention attributes db.system.name
// (Resource.System), db.namespace (DatabaseNamer if the resource
// implements it, else the resource name), db.operation.name (the
// Operation), server.address and server.port (ServerAddresser),
// db.response.status_code (StatusCoder or SQLStater found in the error
// chain) and error.type, plus threepc.resource (the resource name) and,
// on prepare, threepc.vote (prepared or read_only). Everything of our own
// is under the "threepc." prefix; see the attribute keys below.
//
// error.type is the name of the first matching sentinel (the coordinator's
// own, then the resource package's: "unknown_branch", "prepare_refused",
// "unreachable", ...; then "context_canceled" or
// "context_deadline_exceeded"), else the Go type of the first error in the
// chain that is not a plain wrapper (fmt.Errorf, errors.Join).
//
// # Metrics
//
//	threepc.transactions          counter   {threepc.outcome, threepc.protocol}
//	threepc.transaction.duration  histogram s, Begin to the end of Commit or Rollback {threepc.outcome, threepc.protocol}
//	threepc.phase.duration        histogram s {threepc.phase, threepc.protocol}
//	threepc.recovery.scans        counter   {threepc.recovery.result: ok, incomplete, error}
//	threepc.recovery.actions      counter   {threepc.recovery.action} (not counted by dry runs)
//	threepc.indoubt.transactions  gauge     {threepc.resource}, set by every scan
//	threepc.indoubt.oldest_age    gauge     s {threepc.resource}, set by every scan
package tracing

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
)

// ScopeName is the instrumentation scope of every tracer and meter threepc
// creates.
const ScopeName = "github.com/threepc/threepc"

// Version is the instrumentation version reported with ScopeName.
const Version = "0.1.0"

// Attribute keys of threepc's own attributes.
const (
	KeyGTID          = attribute.Key("threepc.gtid")
	KeyProtocol      = attribute.Key("threepc.protocol")
	KeyParticipants  = attribute.Key("threepc.participants")
	KeyPrimary       = attribute.Key("threepc.primary")
	KeyOutcome       = attribute.Key("threepc.outcome")
	KeyPhase         = attribute.Key("threepc.phase")
	KeyResource      = attribute.Key("threepc.resource")
	KeyVote          = attribute.Key("threepc.vote")
	KeyAttempt       = attribute.Key("threepc.attempt")
	KeyDryRun        = attribute.Key("threepc.recovery.dry_run")
	KeyAction        = attribute.Key("threepc.recovery.action")
	KeyReason        = attribute.Key("threepc.recovery.reason")
	KeyAge           = attribute.Key("threepc.recovery.age") // seconds
	KeyResult        = attribute.Key("threepc.recovery.result")
	KeyResources     = attribute.Key("threepc.recovery.resources")
	KeyTransactions  = attribute.Key("threepc.recovery.transactions")
	KeyInDoubt       = attribute.Key("threepc.recovery.in_doubt")
	KeyUnreachable   = attribute.Key("threepc.recovery.unreachable")
	KeyBranches      = attribute.Key("threepc.recovery.branches")
	KeyBranchesDone  = attribute.Key("threepc.recovery.branches_done")
	KeyOldestInDoubt = attribute.Key("threepc.recovery.oldest_in_doubt") // seconds
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

// ServerAddresser is an optional interface of a resource.Resource: the
// address of its server, as "host", "host:port" or "[ipv6]:port", for the
// server.address and server.port attributes. Drivers should implement it.
type ServerAddresser interface {
	ServerAddress() string
}

// DatabaseNamer is an optional interface of a resource.Resource: the
// database (PostgreSQL) or schema (MySQL) name, for db.namespace. Without
// it db.namespace is the resource's registered name.
type DatabaseNamer interface {
	DatabaseName() string
}

// SQLStater is an optional interface of an error in a chain: its SQLSTATE,
// for db.response.status_code. *pgconn.PgError implements it, so the
// PostgreSQL driver needs nothing more.
type SQLStater interface {
	SQLState() string
}

// StatusCoder is an optional interface of an error in a chain: the
// database's own status code, as a string, for db.response.status_code.
// It is checked before SQLStater. The MySQL driver should wrap
// *mysql.MySQLError in a type implementing it (returning the error
// number, e.g. "1397"), because the driver's error type exposes the
// number as a field only.
type StatusCoder interface {
	DBStatusCode() string
}

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
		s[i] = "threepc.branch." + n
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
// (StatusCoder first, then SQLStater), or "".
func StatusCodeOf(err error) string {
	if err == nil {
		return ""
	}
	var sc StatusCoder
	if errors.As(err, &sc) {
		return sc.DBStatusCode()
	}
	var ss SQLStater
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
		b.tracer = tp.Tracer(ScopeName, trace.WithInstrumentationVersion(Version))
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
	return mp.Meter(ScopeName, metric.WithInstrumentationVersion(Version))
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
	if dn, ok := r.(DatabaseNamer); ok && dn.DatabaseName() != "" {
		ns = dn.DatabaseName()
	}
	attrs := []attribute.KeyValue{
		keyDBSystem.String(r.System()),
		keyDBNamespace.String(ns),
		KeyResource.String(name),
	}
	if sa, ok := r.(ServerAddresser); ok {
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
	if b.tracer == nil || !trace.SpanFromContext(ctx).IsRecording() {
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
		s.span.SetAttributes(KeyVote.String("prepared"))
	case resource.VoteReadOnly:
		s.span.SetAttributes(KeyVote.String("read_only"))
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
	attrs := []attribute.KeyValue{KeyAttempt.Int(attempt)}
	if err != nil {
		attrs = append(attrs, keyErrorType.String(ErrorTypeOf(err)), attribute.String("exception.message", err.Error()))
	}
	span.AddEvent("retry", trace.WithAttributes(attrs...))
}
