package telemetry_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/threepc/threepc/internal/telemetry"
	"github.com/threepc/threepc/resource"
	tt "github.com/threepc/threepc/tracing/tracingtest"
)

// pgError stands for *pgconn.PgError, which has SQLState().
type pgError struct{ code string }

func (e *pgError) Error() string    { return "ERROR (SQLSTATE " + e.code + ")" }
func (e *pgError) SQLState() string { return e.code }

// myError stands for a MySQL driver error wrapped to expose its number.
type myError struct{ n int }

func (e *myError) Error() string        { return fmt.Sprintf("Error %d", e.n) }
func (e *myError) DBStatusCode() string { return fmt.Sprint(e.n) }

var errOwn = errors.New("own sentinel")

func TestErrorTypeOf(t *testing.T) {
	cases := []struct {
		err  error
		want string
	}{
		{nil, ""},
		{fmt.Errorf("threepc/postgres: commit prepared: %w: %w", resource.ErrUnknownBranch, &pgError{"42704"}), "unknown_branch"},
		{fmt.Errorf("x: %w", resource.ErrUnreachable), "unreachable"},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), "context_deadline_exceeded"},
		{fmt.Errorf("wrapped: %w", fmt.Errorf("again: %w", &pgError{"23505"})), "*telemetry_test.pgError"},
		{errors.Join(&myError{1205}, errors.New("second")), "*telemetry_test.myError"},
		{errors.New("plain"), "*errors.errorString"},
		{fmt.Errorf("own: %w", errOwn), "own"},
		// Extra sentinels come before the resource package's.
		{fmt.Errorf("%w: %w", errOwn, resource.ErrUnreachable), "own"},
	}
	for _, c := range cases {
		if got := telemetry.ErrorTypeOf(c.err, telemetry.ErrorType{Err: errOwn, Name: "own"}); got != c.want {
			t.Errorf("ErrorTypeOf(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}

func TestStatusCodeOf(t *testing.T) {
	cases := []struct {
		err  error
		want string
	}{
		{nil, ""},
		{errors.New("no code"), ""},
		{fmt.Errorf("a: %w: %w", resource.ErrUnknownBranch, &pgError{"42704"}), "42704"},
		{fmt.Errorf("a: %w", &myError{1397}), "1397"},
		// StatusCoder wins over SQLStater.
		{errors.Join(&pgError{"XA000"}, &myError{1397}), "1397"},
	}
	for _, c := range cases {
		if got := telemetry.StatusCodeOf(c.err); got != c.want {
			t.Errorf("StatusCodeOf(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}

// fakeRes is a resource with the optional interfaces; only the methods
// the instrumentation calls are implemented.
type fakeRes struct {
	resource.Resource
	name, system, addr, db string
}

func (r fakeRes) Name() string          { return r.name }
func (r fakeRes) System() string        { return r.system }
func (r fakeRes) ServerAddress() string { return r.addr }
func (r fakeRes) DatabaseName() string  { return r.db }
func (r fakeRes) DB() *sql.DB           { return nil }

func TestOpSpanAttributes(t *testing.T) {
	tp, rec := tt.NewTracer(t)
	c := telemetry.NewCoordinator(tp, metricnoop.NewMeterProvider(), "3pc")
	// Database calls are spans only under a recording parent (the
	// transaction's or the scan's).
	tx := c.Start(context.Background(), "g")
	defer tx.End(telemetry.OutcomeCommitted, nil)
	ctx := tx.Context(context.Background())
	resources := []fakeRes{
		{name: "orders", system: "postgresql", addr: "127.0.0.1:5433", db: "shop"},
		{name: "billing", system: "mysql", addr: "[::1]:3307"},
		{name: "plain", system: "mariadb", addr: "db.local"},
	}
	for _, r := range resources {
		_, op := c.Wrap(r).Op(ctx, telemetry.OpCommitPrepared)
		op.End(nil)
	}
	_, op := c.Wrap(resources[0]).Op(ctx, telemetry.OpPrepare)
	op.Vote(resource.VoteReadOnly)
	op.End(fmt.Errorf("threepc/postgres: prepare: %w: %w", resource.ErrPrepareRefused, &pgError{"40001"}))

	tree := tt.NewTree(rec.Ended())
	spans := tree.Named("threepc.branch.commit_prepared")
	want := []map[string]string{
		{"db.system.name": "postgresql", "db.namespace": "shop", "server.address": "127.0.0.1", "server.port": "5433", "threepc.resource": "orders"},
		{"db.system.name": "mysql", "db.namespace": "billing", "server.address": "::1", "server.port": "3307"},
		{"db.system.name": "mariadb", "db.namespace": "plain", "server.address": "db.local", "server.port": ""},
	}
	for i, s := range spans {
		for k, v := range want[i] {
			if got := tt.AttrString(s, attrKey(k)); got != v {
				t.Errorf("span %d: %s = %q, want %q\n%s", i, k, got, v, tree)
			}
		}
		if s.Status().Code != codes.Unset {
			t.Errorf("span %d: status %v", i, s.Status())
		}
	}
	p := tree.One(t, "threepc.branch.prepare")
	for k, v := range map[string]string{
		"threepc.vote": "read_only", "error.type": "prepare_refused", "db.response.status_code": "40001",
		"db.operation.name": "prepare",
	} {
		if got := tt.AttrString(p, attrKey(k)); got != v {
			t.Errorf("prepare: %s = %q, want %q\n%s", k, got, v, tree)
		}
	}
	if p.Status().Code != codes.Error {
		t.Errorf("failed prepare: status %v", p.Status())
	}
}

func TestRetryEvent(t *testing.T) {
	tp, rec := tt.NewTracer(t)
	ctx, span := tp.Tracer("test").Start(context.Background(), "op")
	telemetry.Retry(ctx, 1, fmt.Errorf("x: %w", resource.ErrUnreachable))
	telemetry.Retry(ctx, 2, nil)
	span.End()
	ev := rec.Ended()[0].Events()
	if len(ev) != 2 || ev[0].Name != "retry" {
		t.Fatalf("events %+v", ev)
	}
	attrs := map[string]string{}
	for _, kv := range ev[0].Attributes {
		attrs[string(kv.Key)] = kv.Value.String()
	}
	if attrs["threepc.attempt"] != "1" || attrs["error.type"] != "unreachable" {
		t.Fatalf("retry event attributes %v", attrs)
	}
}

// TestNilAndZero: a nil instrumentation and zero span values are no-ops,
// so callers never need to check.
func TestNilAndZero(t *testing.T) {
	var c *telemetry.Coordinator
	ctx := context.Background()
	tx := c.Start(ctx, "g")
	if tx.Context(ctx) != ctx || tx.Recording() {
		t.Fatal("nil coordinator's transaction is not a no-op")
	}
	_, ph := tx.Phase(ctx, resource.PhasePrepare)
	ph.End(errors.New("x"))
	_, op := c.Wrap(fakeRes{name: "a"}).Op(ctx, telemetry.OpPrepare)
	op.Vote(resource.VotePrepared)
	op.End(nil)
	tx.SetParticipants("a", []string{"a"})
	tx.End(telemetry.OutcomeCommitted, nil)
	var s *telemetry.Scanner
	_, sp := s.StartScan(ctx, false)
	sp.End(telemetry.ScanResult{})
	_, rs := s.StartResolve(ctx, "g")
	rs.End(telemetry.Resolution{})
}

// TestNoopAllocations: with the API's no-op providers a transaction's
// instrumentation allocates nothing (not even the no-op tracer's
// contexts: no span is started).
func TestNoopAllocations(t *testing.T) {
	c := telemetry.NewCoordinator(tracenoop.NewTracerProvider(), metricnoop.NewMeterProvider(), "3pc")
	r := &fakeRes{name: "a", system: "postgresql"}     // drivers' resources are pointers
	ctx := context.WithoutCancel(context.Background()) // as after the commit point
	tr := c.Wrap(r)                                    // once per resource, at New
	allocs := testing.AllocsPerRun(200, func() {
		tx := c.Start(ctx, "01J0000000000000000000000")
		tctx := tx.Context(ctx)
		pctx, ph := tx.Phase(tctx, resource.PhasePrepare)
		_, op := tr.Op(pctx, telemetry.OpPrepare)
		op.Vote(resource.VotePrepared)
		op.End(nil)
		ph.End(nil)
		tx.End(telemetry.OutcomeCommitted, nil)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per transaction with no-op providers, want 0", allocs)
	}
}

func attrKey(s string) attribute.Key { return attribute.Key(s) }
