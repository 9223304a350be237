package txmanager_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/threepc/threepc/drivers/mysql"
	"github.com/threepc/threepc/drivers/postgres"
	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/internal/memres"
	"github.com/threepc/threepc/internal/telemetry"
	"github.com/threepc/threepc/migrations"
	"github.com/threepc/threepc/recovery"
	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/tracing"
	tt "github.com/threepc/threepc/tracing/tracingtest"
	"github.com/threepc/threepc/txmanager"
)

// traceWorld is a memres world, a coordinator process and a manager over
// it, with the given extra options.
type traceWorld struct {
	clock *memres.Clock
	world *memres.World
	coord *memres.Proc
	m     *txmanager.Manager
}

// plainProtocol switches the optimizations off: the span trees below are
// the protocol's own steps (TestTracingDefaults shows the optimized one).
var plainProtocol = []txmanager.Option{
	txmanager.WithLastResource(false), txmanager.WithAsyncCleanup(false), txmanager.WithBatching(false),
}

func newTraceWorld(t testing.TB, n int, opts ...txmanager.Option) *traceWorld {
	t.Helper()
	names := make([]string, n)
	for i := range names {
		names[i] = "db" + string(rune('0'+i))
	}
	w := &traceWorld{clock: memres.NewClock(time.Now())}
	w.world = memres.NewWorld(w.clock, names...)
	w.coord = w.world.NewProc("coord")
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	base := []txmanager.Option{
		txmanager.WithClock(w.clock),
		txmanager.WithLogger(quiet),
		txmanager.WithSequential(),
		txmanager.WithCommitTimeout(2 * time.Second),
		txmanager.WithSleep(func(_ context.Context, d time.Duration) error { w.clock.Advance(d); return nil }),
	}
	m, err := txmanager.New(w.coord.Resources(), append(append(base, plainProtocol...), opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	w.m = m
	return w
}

// writeAll runs a write on every named resource.
func writeAll(names ...string) func(ctx context.Context, tx *txmanager.Tx) error {
	return func(ctx context.Context, tx *txmanager.Tx) error {
		for _, n := range names {
			if _, err := tx.DB(n).ExecContext(ctx, "UPDATE"); err != nil {
				return err
			}
		}
		return nil
	}
}

// requestSpan starts the caller's own span, standing for an HTTP request.
func requestSpan(tp trace.TracerProvider) (context.Context, trace.Span) {
	return tp.Tracer("test").Start(context.Background(), "request")
}

func wantChildNames(t *testing.T, tree *tt.Tree, s sdktrace.ReadOnlySpan, want ...string) {
	t.Helper()
	if got := tree.ChildNames(s); !slices.Equal(got, want) {
		t.Fatalf("children of %s: got %v, want %v\n%s", s.Name(), got, want, tree)
	}
}

func wantAttr(t *testing.T, tree *tt.Tree, s sdktrace.ReadOnlySpan, key attribute.Key, want string) {
	t.Helper()
	if got := tt.AttrString(s, key); got != want {
		t.Fatalf("%s: %s = %q, want %q\n%s", s.Name(), key, got, want, tree)
	}
}

// wantOps checks the CLIENT spans under a phase: their names and the
// database attributes, resource by resource.
func wantOps(t *testing.T, tree *tt.Tree, phase sdktrace.ReadOnlySpan, op telemetry.Operation, resources ...string) []sdktrace.ReadOnlySpan {
	t.Helper()
	kids := tree.Children(phase)
	if len(kids) != len(resources) {
		t.Fatalf("%s: %d children, want %d %s spans\n%s", phase.Name(), len(kids), len(resources), op, tree)
	}
	for i, k := range kids {
		if k.Name() != "threepc.branch."+op.String() || k.SpanKind() != trace.SpanKindClient {
			t.Fatalf("%s child %d: %s [%s], want threepc.branch.%s [client]\n%s", phase.Name(), i, k.Name(), k.SpanKind(), op, tree)
		}
		wantAttr(t, tree, k, "db.system.name", "memres")
		wantAttr(t, tree, k, "db.namespace", resources[i])
		wantAttr(t, tree, k, "threepc.resource", resources[i])
		wantAttr(t, tree, k, "db.operation.name", op.String())
	}
	return kids
}

func TestTracingCommit3PC(t *testing.T) {
	tp, rec := tt.NewTracer(t)
	w := newTraceWorld(t, 2, txmanager.WithTracerProvider(tp))
	ctx, req := requestSpan(tp)
	var gtid string
	err := w.m.Run(ctx, func(ctx context.Context, tx *txmanager.Tx) error {
		gtid = tx.GTID()
		// The caller's own work inside fn nests under the transaction.
		_, own := tp.Tracer("test").Start(ctx, "user work")
		own.End()
		return writeAll("db0", "db1")(ctx, tx)
	})
	req.End()
	if err != nil {
		t.Fatal(err)
	}
	tree := tt.NewTree(rec.Ended())
	txs := tree.One(t, tracing.TransactionSpanName)
	if p := tree.Parent(txs); p == nil || p.Name() != "request" {
		t.Fatalf("transaction's parent is %v, want the request span\n%s", p, tree)
	}
	wantAttr(t, tree, txs, "threepc.gtid", gtid)
	wantAttr(t, tree, txs, "threepc.protocol", "3pc")
	wantAttr(t, tree, txs, "threepc.outcome", "committed")
	wantAttr(t, tree, txs, "threepc.primary", "db0")
	wantAttr(t, tree, txs, "threepc.participants", `["db0","db1"]`)
	if txs.Status().Code == codes.Error {
		t.Fatalf("committed transaction has status Error\n%s", tree)
	}
	wantChildNames(t, tree, txs, "user work", "threepc.branch.begin", "threepc.branch.begin",
		"threepc.prepare", "threepc.decide", "threepc.precommit", "threepc.commit", "threepc.cleanup")

	begins := tree.Named("threepc.branch.begin")
	wantAttr(t, tree, begins[0], "threepc.resource", "db0")
	wantAttr(t, tree, begins[1], "threepc.resource", "db1")
	for _, p := range wantOps(t, tree, tree.One(t, "threepc.prepare"), telemetry.OpPrepare, "db0", "db1") {
		wantAttr(t, tree, p, "threepc.vote", "prepared")
	}
	wantOps(t, tree, tree.One(t, "threepc.decide"), telemetry.OpInsertMarker, "db0")
	wantOps(t, tree, tree.One(t, "threepc.precommit"), telemetry.OpInsertMarker, "db1")
	wantOps(t, tree, tree.One(t, "threepc.commit"), telemetry.OpCommit, "db0", "db1")
	// The primary's decision row becomes a tombstone first, then the
	// other participant's rows go.
	cleanup := tree.Children(tree.One(t, "threepc.cleanup"))
	wantOpSeq(t, tree, cleanup, telemetry.OpTombstone, "db0", telemetry.OpDeleteMarkers, "db1")
}

// wantOpSeq checks spans against (operation, resource) pairs, in order.
func wantOpSeq(t *testing.T, tree *tt.Tree, spans []sdktrace.ReadOnlySpan, pairs ...any) {
	t.Helper()
	if len(spans) != len(pairs)/2 {
		t.Fatalf("%d spans, want %d: %v\n%s", len(spans), len(pairs)/2, pairs, tree)
	}
	for i, k := range spans {
		op, res := pairs[2*i].(telemetry.Operation), pairs[2*i+1].(string)
		if k.Name() != "threepc.branch."+op.String() || tt.AttrString(k, "threepc.resource") != res {
			t.Fatalf("span %d: %s on %s, want %s on %s\n%s", i, k.Name(), tt.AttrString(k, "threepc.resource"), op, res, tree)
		}
	}
}

func TestTracingCommit2PCReadOnly(t *testing.T) {
	tp, rec := tt.NewTracer(t)
	w := newTraceWorld(t, 3, txmanager.WithTracerProvider(tp), txmanager.WithProtocol(txmanager.TwoPC))
	ctx, req := requestSpan(tp)
	// Begin and Commit, not Run: the transaction still hangs under the
	// context given to Begin.
	tx, err := w.m.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeAll("db0", "db1")(ctx, tx); err != nil {
		t.Fatal(err)
	}
	var x int
	_ = tx.DB("db2").QueryRowContext(ctx, "SELECT").Scan(&x) // enlists db2, writes nothing
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	req.End()

	tree := tt.NewTree(rec.Ended())
	txs := tree.One(t, tracing.TransactionSpanName)
	if p := tree.Parent(txs); p == nil || p.Name() != "request" {
		t.Fatalf("transaction's parent is %v, want the request span\n%s", p, tree)
	}
	wantAttr(t, tree, txs, "threepc.protocol", "2pc")
	wantAttr(t, tree, txs, "threepc.outcome", "committed")
	wantAttr(t, tree, txs, "threepc.participants", `["db0","db1","db2"]`)
	wantChildNames(t, tree, txs, "threepc.branch.begin", "threepc.branch.begin", "threepc.branch.begin",
		"threepc.prepare", "threepc.decide", "threepc.commit", "threepc.cleanup")
	prep := wantOps(t, tree, tree.One(t, "threepc.prepare"), telemetry.OpPrepare, "db0", "db1", "db2")
	wantAttr(t, tree, prep[0], "threepc.vote", "prepared")
	wantAttr(t, tree, prep[2], "threepc.vote", "read_only")
	wantOps(t, tree, tree.One(t, "threepc.decide"), telemetry.OpInsertMarker, "db0")
	// The read-only branch left after its vote.
	wantOps(t, tree, tree.One(t, "threepc.commit"), telemetry.OpCommit, "db0", "db1")
	// 2PC has no precommit rows elsewhere, but db1's evidence row goes.
	wantOpSeq(t, tree, tree.Children(tree.One(t, "threepc.cleanup")), telemetry.OpTombstone, "db0", telemetry.OpDeleteMarkers, "db1")
}

func TestTracingAbortAtPrepare(t *testing.T) {
	tp, rec := tt.NewTracer(t)
	w := newTraceWorld(t, 2, txmanager.WithTracerProvider(tp))
	w.world.Fault = func(op memres.Op) memres.Fault {
		if op.Kind == "prepare" && op.DB == "db1" {
			return memres.Refuse
		}
		return memres.NoFault
	}
	ctx, req := requestSpan(tp)
	err := w.m.Run(ctx, writeAll("db0", "db1"))
	req.End()
	if !errors.Is(err, txmanager.ErrAborted) {
		t.Fatalf("Run: %v, want ErrAborted", err)
	}
	tree := tt.NewTree(rec.Ended())
	txs := tree.One(t, tracing.TransactionSpanName)
	wantAttr(t, tree, txs, "threepc.outcome", "aborted")
	wantAttr(t, tree, txs, "error.type", "prepare_refused")
	if txs.Status().Code != codes.Error {
		t.Fatalf("aborted transaction: status %v, want Error\n%s", txs.Status(), tree)
	}
	wantChildNames(t, tree, txs, "threepc.branch.begin", "threepc.branch.begin", "threepc.prepare", "threepc.rollback")
	prepare := tree.One(t, "threepc.prepare")
	if prepare.Status().Code != codes.Error {
		t.Fatalf("prepare phase: status %v, want Error\n%s", prepare.Status(), tree)
	}
	ops := wantOps(t, tree, prepare, telemetry.OpPrepare, "db0", "db1")
	wantAttr(t, tree, ops[0], "threepc.vote", "prepared")
	if ops[1].Status().Code != codes.Error {
		t.Fatalf("refused prepare: status %v, want Error\n%s", ops[1].Status(), tree)
	}
	wantAttr(t, tree, ops[1], "error.type", "prepare_refused")
	if _, voted := tt.Attr(ops[1], "threepc.vote"); voted {
		t.Fatalf("refused prepare carries a vote\n%s", tree)
	}
	wantOps(t, tree, tree.One(t, "threepc.rollback"), telemetry.OpRollback, "db0", "db1")
}

func TestTracingOnePhase(t *testing.T) {
	tp, rec := tt.NewTracer(t)
	w := newTraceWorld(t, 2, txmanager.WithTracerProvider(tp))
	if err := w.m.Run(context.Background(), writeAll("db1")); err != nil {
		t.Fatal(err)
	}
	tree := tt.NewTree(rec.Ended())
	txs := tree.One(t, tracing.TransactionSpanName)
	if txs.Parent().IsValid() {
		t.Fatalf("transaction without a caller span has a parent\n%s", tree)
	}
	wantAttr(t, tree, txs, "threepc.outcome", "committed")
	wantChildNames(t, tree, txs, "threepc.branch.begin", "threepc.commit_one_phase")
	wantOps(t, tree, tree.One(t, "threepc.commit_one_phase"), telemetry.OpCommitOnePhase, "db1")
}

// TestTracingRecovered crashes the coordinator right after its decision,
// then lets a recovery scan finish the transaction: the coordinator's span
// says commit_pending, with retry events on its commits; the scan's span
// shows the resolution.
func TestTracingRecovered(t *testing.T) {
	tp, rec := tt.NewTracer(t)
	var coord *memres.Proc
	hook := func(_ context.Context, fp txmanager.Failpoint, _, _ string) error {
		if fp == txmanager.AfterDecide {
			coord.Crash()
		}
		return nil
	}
	w := newTraceWorld(t, 2, txmanager.WithTracerProvider(tp), txmanager.WithFailpoints(hook))
	coord = w.coord
	ctx, req := requestSpan(tp)
	var gtid string
	err := w.m.Run(ctx, func(ctx context.Context, tx *txmanager.Tx) error {
		gtid = tx.GTID()
		return writeAll("db0", "db1")(ctx, tx)
	})
	req.End()
	if !errors.Is(err, txmanager.ErrCommitPending) {
		t.Fatalf("Run: %v, want ErrCommitPending", err)
	}

	w.clock.Advance(time.Hour)
	sc, err := recovery.New(w.world.NewProc("rec").Resources(), recovery.WithClock(w.clock),
		recovery.WithTracerProvider(tp), recovery.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := sc.ScanOnce(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if out := w.world.Outcome(gtid); out != memres.AllCommitted {
		t.Fatalf("outcome after recovery: %v", out)
	}
	if len(rep.Transactions) != 1 {
		t.Fatalf("scan found %d transactions, want 1", len(rep.Transactions))
	}

	tree := tt.NewTree(rec.Ended())
	txs := tree.One(t, tracing.TransactionSpanName)
	wantAttr(t, tree, txs, "threepc.outcome", "commit_pending")
	wantAttr(t, tree, txs, "error.type", "unreachable")
	commits := wantOps(t, tree, tree.One(t, "threepc.commit"), telemetry.OpCommit, "db0", "db1")
	for _, c := range commits {
		retries := 0
		for _, e := range c.Events() {
			if e.Name == "retry" {
				retries++
			}
		}
		if retries == 0 || c.Status().Code != codes.Error {
			t.Fatalf("commit on a crashed coordinator: %d retry events, status %v\n%s", retries, c.Status(), tree)
		}
	}

	scan := tree.One(t, tracing.ScanSpanName)
	if scan.Parent().IsValid() {
		t.Fatalf("scan has a parent\n%s", tree)
	}
	wantAttr(t, tree, scan, "threepc.recovery.transactions", "1")
	wantAttr(t, tree, scan, "threepc.recovery.in_doubt", "0")
	wantAttr(t, tree, scan, "threepc.recovery.result", "ok")
	wantChildNames(t, tree, scan,
		"threepc.branch.list_markers", "threepc.branch.list_markers",
		"threepc.branch.recover", "threepc.branch.recover", tracing.ResolveSpanName)
	resolve := tree.One(t, tracing.ResolveSpanName)
	wantAttr(t, tree, resolve, "threepc.gtid", gtid)
	wantAttr(t, tree, resolve, "threepc.recovery.action", "commit")
	wantAttr(t, tree, resolve, "threepc.recovery.reason", "precommit row found; every branch proven committed")
	wantAttr(t, tree, resolve, "threepc.recovery.branches_done", "2")
	if age, _ := tt.Attr(resolve, "threepc.recovery.age"); age.AsFloat64() < 3600 {
		t.Fatalf("resolve age %v, want >= 3600 s\n%s", age.AsFloat64(), tree)
	}
	kids := tree.Children(resolve)
	var names []string
	for _, k := range kids {
		names = append(names, k.Name()+"@"+tt.AttrString(k, "threepc.resource"))
	}
	slices.Sort(names) // the commits run in parallel
	want := []string{"threepc.branch.commit_prepared@db0", "threepc.branch.commit_prepared@db1", "threepc.branch.delete_markers@db1", "threepc.branch.tombstone@db0"}
	if !slices.Equal(names, want) {
		t.Fatalf("resolve children %v, want %v\n%s", names, want, tree)
	}
}

func TestTracingMetrics(t *testing.T) {
	mp, reader := tt.NewMeter(t)
	w := newTraceWorld(t, 2, txmanager.WithMeterProvider(mp), txmanager.WithTracerProvider(tracenoop.NewTracerProvider()))
	ctx := context.Background()
	if err := w.m.Run(ctx, writeAll("db0", "db1")); err != nil {
		t.Fatal(err)
	}
	if err := w.m.Run(ctx, writeAll("db0", "db1")); err != nil {
		t.Fatal(err)
	}
	w.world.Fault = func(op memres.Op) memres.Fault {
		if op.Kind == "prepare" && op.DB == "db1" {
			return memres.Refuse
		}
		return memres.NoFault
	}
	if err := w.m.Run(ctx, writeAll("db0", "db1")); !errors.Is(err, txmanager.ErrAborted) {
		t.Fatalf("want an abort, got %v", err)
	}
	w.world.Fault = nil
	if err := w.m.Run(ctx, writeAll("db0")); err != nil { // one phase
		t.Fatal(err)
	}

	rm := tt.Collect(t, reader)
	got := tt.Points(t, tt.Metric(t, rm, "threepc.transactions"))
	want := map[string]int64{
		"threepc.outcome=committed,threepc.protocol=3pc": 3,
		"threepc.outcome=aborted,threepc.protocol=3pc":   1,
	}
	if !mapsEqual(got, want) {
		t.Fatalf("threepc.transactions = %v, want %v", got, want)
	}
	durs := tt.HistogramCounts(t, tt.Metric(t, rm, "threepc.transaction.duration"))
	if durs["threepc.outcome=committed,threepc.protocol=3pc"] != 3 || durs["threepc.outcome=aborted,threepc.protocol=3pc"] != 1 {
		t.Fatalf("threepc.transaction.duration counts %v", durs)
	}
	phases := tt.HistogramCounts(t, tt.Metric(t, rm, "threepc.phase.duration"))
	wantPhases := map[string]uint64{
		"threepc.phase=prepare,threepc.protocol=3pc":          3,
		"threepc.phase=decide,threepc.protocol=3pc":           2,
		"threepc.phase=precommit,threepc.protocol=3pc":        2,
		"threepc.phase=commit,threepc.protocol=3pc":           2,
		"threepc.phase=cleanup,threepc.protocol=3pc":          2,
		"threepc.phase=rollback,threepc.protocol=3pc":         1,
		"threepc.phase=commit_one_phase,threepc.protocol=3pc": 1,
	}
	if !mapsEqual(phases, wantPhases) {
		t.Fatalf("threepc.phase.duration counts %v, want %v", phases, wantPhases)
	}
}

func mapsEqual[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestTracingOTLPExport exports a transaction's spans over OTLP/HTTP to a
// receiver inside the test and decodes what arrived.
func TestTracingOTLPExport(t *testing.T) {
	var (
		mu    sync.Mutex
		names []string
		gtids []string
	)
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" {
			http.Error(rw, "not found", http.StatusNotFound)
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(rw, err.Error(), http.StatusBadRequest)
			return
		}
		var req coltracepb.ExportTraceServiceRequest
		if err := proto.Unmarshal(body, &req); err != nil {
			http.Error(rw, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		for _, rs := range req.GetResourceSpans() {
			for _, ss := range rs.GetScopeSpans() {
				if ss.GetScope().GetName() != tracing.ScopeName {
					continue
				}
				for _, s := range ss.GetSpans() {
					names = append(names, s.GetName())
					for _, kv := range s.GetAttributes() {
						if kv.GetKey() == "threepc.gtid" {
							gtids = append(gtids, kv.GetValue().GetStringValue())
						}
					}
				}
			}
		}
		mu.Unlock()
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		rw.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = rw.Write(out)
	}))
	defer srv.Close()

	ctx := context.Background()
	exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(srv.URL+"/v1/traces"))
	if err != nil {
		t.Fatal(err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp))
	w := newTraceWorld(t, 2, txmanager.WithTracerProvider(tp))
	var gtid string
	err = w.m.Run(ctx, func(ctx context.Context, tx *txmanager.Tx) error {
		gtid = tx.GTID()
		return writeAll("db0", "db1")(ctx, tx)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := tp.Shutdown(ctx); err != nil { // flushes
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(names)
	names = slices.Compact(names)
	want := []string{
		"threepc.branch.begin", "threepc.branch.commit", "threepc.branch.delete_markers",
		"threepc.branch.insert_marker", "threepc.branch.prepare", "threepc.branch.tombstone", "threepc.cleanup", "threepc.commit",
		"threepc.decide", "threepc.precommit", "threepc.prepare", "threepc.transaction",
	}
	if !slices.Equal(names, want) {
		t.Fatalf("received span names %v, want %v", names, want)
	}
	if !slices.Equal(gtids, []string{gtid}) {
		t.Fatalf("received gtids %v, want [%s]", gtids, gtid)
	}
}

// BenchmarkCommitTracing measures the cost of the instrumentation: a
// two-participant 3PC transaction over in-memory databases, with no-op
// providers (off) and with SDK providers that sample and process every
// span and keep every metric (on).
func BenchmarkCommitTracing(b *testing.B) {
	run := func(b *testing.B, opts ...txmanager.Option) {
		w := newTraceWorld(b, 2, opts...)
		ctx := context.Background()
		fn := writeAll("db0", "db1")
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; b.Loop(); i++ {
			if err := w.m.Run(ctx, fn); err != nil {
				b.Fatal(err)
			}
			if i%1024 == 0 {
				w.world.Trace = nil // memres keeps a log of every operation
			}
		}
	}
	b.Run("off", func(b *testing.B) {
		run(b, txmanager.WithTracerProvider(tracenoop.NewTracerProvider()),
			txmanager.WithMeterProvider(metricnoop.NewMeterProvider()))
	})
	b.Run("on", func(b *testing.B) {
		tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()),
			sdktrace.WithBatcher(discardExporter{}))
		defer func() { _ = tp.Shutdown(context.Background()) }()
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
		defer func() { _ = mp.Shutdown(context.Background()) }()
		run(b, txmanager.WithTracerProvider(tp), txmanager.WithMeterProvider(mp))
	})
}

// BenchmarkCommitTracingDB is BenchmarkCommitTracing against real
// PostgreSQL and MariaDB servers (package harness): the overhead that
// matters, next to real round trips.
func BenchmarkCommitTracingDB(b *testing.B) {
	ctx := context.Background()
	pgSrv := harness.Shared(b, harness.Postgres)
	mdSrv := harness.Shared(b, harness.MariaDB)
	pg, err := postgres.Open("pg", pgSrv.DSN(pgSrv.NewDatabase(b)), postgres.Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer pg.Close()
	maria, err := mysql.Open("maria", mdSrv.DSN(mdSrv.NewDatabase(b)), mysql.Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer maria.Close()
	for _, r := range []resource.Resource{pg, maria} {
		d := migrations.DialectMySQL
		if r.System() == "postgresql" {
			d = migrations.DialectPostgres
		}
		if err := migrations.Up(ctx, resource.DBOf(r), d); err != nil {
			b.Fatal(err)
		}
		if _, err := resource.DBOf(r).ExecContext(ctx, "CREATE TABLE counters (id BIGINT PRIMARY KEY, n BIGINT NOT NULL)"); err != nil {
			b.Fatal(err)
		}
		if _, err := resource.DBOf(r).ExecContext(ctx, "INSERT INTO counters VALUES (1, 0)"); err != nil {
			b.Fatal(err)
		}
	}
	fn := func(ctx context.Context, tx *txmanager.Tx) error {
		for _, n := range []string{"pg", "maria"} {
			if _, err := tx.DB(n).ExecContext(ctx, "UPDATE counters SET n = n + 1 WHERE id = 1"); err != nil {
				return err
			}
		}
		return nil
	}
	run := func(b *testing.B, opts ...txmanager.Option) {
		m, err := txmanager.New([]resource.Resource{pg, maria}, append(append([]txmanager.Option{txmanager.WithLogger(quietLog)}, plainProtocol...), opts...)...)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			if err := m.Run(ctx, fn); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("off", func(b *testing.B) {
		run(b, txmanager.WithTracerProvider(tracenoop.NewTracerProvider()),
			txmanager.WithMeterProvider(metricnoop.NewMeterProvider()))
	})
	b.Run("on", func(b *testing.B) {
		tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()),
			sdktrace.WithBatcher(discardExporter{}))
		defer func() { _ = tp.Shutdown(context.Background()) }()
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
		defer func() { _ = mp.Shutdown(context.Background()) }()
		run(b, txmanager.WithTracerProvider(tp), txmanager.WithMeterProvider(mp))
	})
}

type discardExporter struct{}

func (discardExporter) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discardExporter) Shutdown(context.Context) error                             { return nil }
