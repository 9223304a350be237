package recovery_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"

	"github.com/threepc/threepc/internal/memres"
	"github.com/threepc/threepc/recovery"
	"github.com/threepc/threepc/tracing"
	tt "github.com/threepc/threepc/tracing/tracingtest"
	"github.com/threepc/threepc/txmanager"
)

// TestTracingFence: a coordinator dies with both branches prepared and no
// decision; the scan fences at the primary and rolls both back.
func TestTracingFence(t *testing.T) {
	clock := memres.NewClock(time.Now())
	w := memres.NewWorld(clock, "a", "b")
	gtid := crashedTx(t, w, clock, txmanager.ThreePC, txmanager.BeforeDecide)
	clock.Advance(2 * time.Minute)
	tp, rec := tt.NewTracer(t)
	ctx, parent := tp.Tracer("test").Start(context.Background(), "startup")
	if _, err := newScanner(t, w.NewProc("rec"), clock, recovery.WithTracerProvider(tp)).ScanOnce(ctx); err != nil {
		t.Fatal(err)
	}
	parent.End()
	if out := w.Outcome(gtid); out != memres.AllAborted {
		t.Fatalf("outcome %v, want all aborted", out)
	}

	tree := tt.NewTree(rec.Ended())
	scan := tree.One(t, tracing.ScanSpanName)
	if p := tree.Parent(scan); p == nil || p.Name() != "startup" {
		t.Fatalf("scan's parent %v, want the caller's span\n%s", p, tree)
	}
	for key, want := range map[string]string{
		"threepc.recovery.result":       "ok",
		"threepc.recovery.resources":    `["a","b"]`,
		"threepc.recovery.transactions": "1",
		"threepc.recovery.in_doubt":     "0",
		"threepc.recovery.dry_run":      "false",
	} {
		if got := tt.AttrString(scan, attribute.Key(key)); got != want {
			t.Fatalf("scan %s = %q, want %q\n%s", key, got, want, tree)
		}
	}
	resolve := tree.One(t, tracing.ResolveSpanName)
	if tree.Parent(resolve) != scan {
		t.Fatalf("resolve is not the scan's child\n%s", tree)
	}
	for key, want := range map[string]string{
		"threepc.gtid":                   gtid,
		"threepc.recovery.action":        "fence",
		"threepc.recovery.reason":        "no marker row; fenced at the primary",
		"threepc.primary":                "a",
		"threepc.recovery.branches":      "2",
		"threepc.recovery.branches_done": "2",
	} {
		if got := tt.AttrString(resolve, attribute.Key(key)); got != want {
			t.Fatalf("resolve %s = %q, want %q\n%s", key, got, want, tree)
		}
	}
	var kids []string
	for _, k := range tree.Children(resolve) {
		kids = append(kids, k.Name()+"@"+tt.AttrString(k, "threepc.resource"))
	}
	// The fence comes first; the two rollbacks run in parallel.
	if len(kids) != 3 || kids[0] != "threepc.branch.insert_marker@a" {
		t.Fatalf("resolve children %v\n%s", kids, tree)
	}
	slices.Sort(kids[1:])
	if !slices.Equal(kids[1:], []string{"threepc.branch.rollback_prepared@a", "threepc.branch.rollback_prepared@b"}) {
		t.Fatalf("resolve children %v\n%s", kids, tree)
	}
}

// TestTracingScanMetrics: a transaction whose primary is down stays in
// doubt (gauges per resource, an in-doubt span); once the primary is back
// it is fenced.
func TestTracingScanMetrics(t *testing.T) {
	clock := memres.NewClock(time.Now())
	w := memres.NewWorld(clock, "a", "b")
	crashedTx(t, w, clock, txmanager.TwoPC, txmanager.BeforeDecide)
	clock.Advance(2 * time.Minute)
	tp, rec := tt.NewTracer(t)
	mp, reader := tt.NewMeter(t)
	sc := newScanner(t, w.NewProc("rec"), clock, recovery.WithTracerProvider(tp), recovery.WithMeterProvider(mp))
	ctx := context.Background()

	w.SetDown("a", true)
	if _, err := sc.ScanOnce(ctx); err != nil {
		t.Fatal(err)
	}
	rm := tt.Collect(t, reader)
	if got := tt.Points(t, tt.Metric(t, rm, "threepc.indoubt.transactions")); !mapsEqual(got, map[string]int64{"threepc.resource=b": 1}) {
		t.Fatalf("threepc.indoubt.transactions = %v (a is down: no figure for it)", got)
	}
	if got := tt.FloatPoints(t, tt.Metric(t, rm, "threepc.indoubt.oldest_age")); len(got) != 1 || got["threepc.resource=b"] < 115 || got["threepc.resource=b"] > 125 {
		// The gtid's time comes from the wall clock, the scanner's from
		// the test clock started just before: about 120 s apart.
		t.Fatalf("threepc.indoubt.oldest_age = %v, want b about 120 s", got)
	}
	tree := tt.NewTree(rec.Ended())
	scan := tree.One(t, tracing.ScanSpanName)
	if got := tt.AttrString(scan, "threepc.recovery.unreachable"); got != `["a"]` {
		t.Fatalf("unreachable = %s\n%s", got, tree)
	}
	if got := tt.AttrString(scan, "threepc.recovery.result"); got != "incomplete" {
		t.Fatalf("result = %s\n%s", got, tree)
	}
	resolve := tree.One(t, tracing.ResolveSpanName)
	if resolve.Status().Code != codes.Error || tt.AttrString(resolve, "threepc.recovery.action") != "in-doubt" ||
		tt.AttrString(resolve, "error.type") == "" {
		t.Fatalf("in-doubt resolve span\n%s", tree)
	}
	var listA []string
	for _, s := range tree.Named("threepc.branch.list_markers") {
		if tt.AttrString(s, "threepc.resource") == "a" {
			listA = append(listA, tt.AttrString(s, "error.type"))
		}
	}
	if !slices.Equal(listA, []string{"unreachable"}) {
		t.Fatalf("list_markers on the down resource: error types %v\n%s", listA, tree)
	}

	// A dry run sees the same and counts no action.
	w.SetDown("a", false)
	if _, err := sc.Inspect(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := sc.ScanOnce(ctx); err != nil {
		t.Fatal(err)
	}
	rm = tt.Collect(t, reader)
	if got := tt.Points(t, tt.Metric(t, rm, "threepc.recovery.actions")); !mapsEqual(got, map[string]int64{
		"threepc.recovery.action=in-doubt": 1,
		"threepc.recovery.action=fence":    1,
	}) {
		t.Fatalf("threepc.recovery.actions = %v", got)
	}
	if got := tt.Points(t, tt.Metric(t, rm, "threepc.recovery.scans")); !mapsEqual(got, map[string]int64{
		"threepc.recovery.result=incomplete": 2, // the first scan and the dry run (which fences nothing)
		"threepc.recovery.result=ok":         1,
	}) {
		t.Fatalf("threepc.recovery.scans = %v", got)
	}
	if got := tt.Points(t, tt.Metric(t, rm, "threepc.indoubt.transactions")); !mapsEqual(got, map[string]int64{
		"threepc.resource=a": 0, "threepc.resource=b": 0,
	}) {
		t.Fatalf("threepc.indoubt.transactions after the fence = %v", got)
	}
}

func mapsEqual[K, V comparable](a, b map[K]V) bool {
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
