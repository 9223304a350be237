// Package tracing names threepc's OpenTelemetry instrumentation: the
// scope, span names and attribute keys of the spans and metrics that the
// coordinator (txmanager) and the recovery scanner (recovery) emit, for
// programs that filter or assert on them. The instrumentation itself is
// internal; programs pass txmanager.WithTracerProvider /
// WithMeterProvider (and the same options of package recovery), which
// default to the otel globals.
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
// BranchSpanPrefix + <operation>, with <operation> one of: begin, prepare, commit, commit_prepared, commit_one_phase,
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
// (Resource.System), db.namespace (resource.DatabaseNamer if the resource
// implements it, else the resource name), db.operation.name (the
// operation), server.address and server.port (resource.ServerAddresser),
// db.response.status_code (resource.StatusCoder or resource.SQLStater found in the error
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
//	threepc.prepared.other.transactions  gauge  {threepc.resource}: other software's prepared transactions on the server
//	threepc.prepared.other.oldest_age    gauge  s {threepc.resource}: the oldest of them (PostgreSQL; 0 on MySQL, MariaDB)
package tracing

import "go.opentelemetry.io/otel/attribute"

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

// TransactionSpanName is the name of a transaction's span.
const TransactionSpanName = "threepc.transaction"

// PhaseSpanPrefix begins the name of every phase span: "threepc." and
// the phase (resource.Phase), e.g. "threepc.prepare".
const PhaseSpanPrefix = "threepc."

// BranchSpanPrefix begins the name of every database call's CLIENT span:
// "threepc.branch." and the operation, e.g. "threepc.branch.prepare".
const BranchSpanPrefix = "threepc.branch."

// Span names of the recovery scanner.
const (
	ScanSpanName    = "threepc.recovery.scan"
	ResolveSpanName = "threepc.recovery.resolve"
)

// Scan results, the threepc.recovery.result attribute of
// threepc.recovery.scans.
const (
	ResultOK         = "ok"         // every resource scanned, nothing left in doubt
	ResultIncomplete = "incomplete" // a resource unreachable, or a transaction left in doubt
	ResultError      = "error"      // the scan could not run
)
