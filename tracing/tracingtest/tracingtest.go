// Package tracingtest has helpers for tests that assert threepc's span
// trees and metrics. It uses the OpenTelemetry SDK; only tests import it.
package tracingtest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// NewTracer returns an always-sampling SDK tracer provider whose spans a
// SpanRecorder sees. It is shut down when the test ends.
func NewTracer(tb testing.TB) (*sdktrace.TracerProvider, *tracetest.SpanRecorder) {
	tb.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithSpanProcessor(rec))
	tb.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp, rec
}

// NewMeter returns an SDK meter provider read by a ManualReader.
func NewMeter(tb testing.TB) (*sdkmetric.MeterProvider, *sdkmetric.ManualReader) {
	tb.Helper()
	r := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))
	tb.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	return mp, r
}

// Tree indexes ended spans by id and parent.
type Tree struct {
	Spans []sdktrace.ReadOnlySpan
	byID  map[trace.SpanID]sdktrace.ReadOnlySpan
}

// NewTree indexes spans (SpanRecorder.Ended()).
func NewTree(spans []sdktrace.ReadOnlySpan) *Tree {
	t := &Tree{Spans: slices.Clone(spans), byID: map[trace.SpanID]sdktrace.ReadOnlySpan{}}
	slices.SortStableFunc(t.Spans, func(a, b sdktrace.ReadOnlySpan) int { return a.StartTime().Compare(b.StartTime()) })
	for _, s := range t.Spans {
		t.byID[s.SpanContext().SpanID()] = s
	}
	return t
}

// Named returns the spans called name, in start order.
func (t *Tree) Named(name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range t.Spans {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

// One returns the only span called name, or fails the test.
func (t *Tree) One(tb testing.TB, name string) sdktrace.ReadOnlySpan {
	tb.Helper()
	got := t.Named(name)
	if len(got) != 1 {
		tb.Fatalf("want one span %q, got %d\n%s", name, len(got), t)
	}
	return got[0]
}

// Parent returns s's parent among the recorded spans, or nil.
func (t *Tree) Parent(s sdktrace.ReadOnlySpan) sdktrace.ReadOnlySpan {
	if !s.Parent().IsValid() {
		return nil
	}
	return t.byID[s.Parent().SpanID()]
}

// Children returns s's children, in start order.
func (t *Tree) Children(s sdktrace.ReadOnlySpan) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, c := range t.Spans {
		if c.Parent().SpanID() == s.SpanContext().SpanID() && c.Parent().IsValid() {
			out = append(out, c)
		}
	}
	return out
}

// ChildNames returns the names of s's children, in start order.
func (t *Tree) ChildNames(s sdktrace.ReadOnlySpan) []string {
	var out []string
	for _, c := range t.Children(s) {
		out = append(out, c.Name())
	}
	return out
}

// String renders the tree, for failure messages.
func (t *Tree) String() string {
	var b strings.Builder
	var walk func(s sdktrace.ReadOnlySpan, depth int)
	walk = func(s sdktrace.ReadOnlySpan, depth int) {
		fmt.Fprintf(&b, "%s%s [%s]", strings.Repeat("  ", depth), s.Name(), s.SpanKind())
		if s.Status().Code == codes.Error {
			fmt.Fprintf(&b, " ERROR %q", s.Status().Description)
		}
		for _, kv := range s.Attributes() {
			fmt.Fprintf(&b, " %s=%s", kv.Key, kv.Value.String())
		}
		b.WriteByte('\n')
		for _, c := range t.Children(s) {
			walk(c, depth+1)
		}
	}
	for _, s := range t.Spans {
		if t.Parent(s) == nil {
			walk(s, 0)
		}
	}
	return b.String()
}

// Attr returns the value of s's attribute key, and whether it is set.
func Attr(s sdktrace.ReadOnlySpan, key attribute.Key) (attribute.Value, bool) {
	for _, kv := range s.Attributes() {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

// AttrString returns s's attribute key rendered as a string ("" if
// unset).
func AttrString(s sdktrace.ReadOnlySpan, key attribute.Key) string {
	v, _ := Attr(s, key)
	return v.String()
}

// Collect reads every metric from r.
func Collect(tb testing.TB, r *sdkmetric.ManualReader) metricdata.ResourceMetrics {
	tb.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		tb.Fatalf("collect metrics: %v", err)
	}
	return rm
}

// Metric returns the metric called name, or fails the test.
func Metric(tb testing.TB, rm metricdata.ResourceMetrics, name string) metricdata.Metrics {
	tb.Helper()
	var names []string
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m
			}
			names = append(names, m.Name)
		}
	}
	tb.Fatalf("no metric %q (have %v)", name, names)
	return metricdata.Metrics{}
}

// Points returns an integer counter's or gauge's data points by their
// attribute set's encoding ("k=v,k=v" in key order).
func Points(tb testing.TB, m metricdata.Metrics) map[string]int64 {
	tb.Helper()
	out := map[string]int64{}
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			out[encode(p.Attributes)] = p.Value
		}
	case metricdata.Gauge[int64]:
		for _, p := range d.DataPoints {
			out[encode(p.Attributes)] = p.Value
		}
	default:
		tb.Fatalf("metric %q: not an int64 sum or gauge: %T", m.Name, m.Data)
	}
	return out
}

// FloatPoints returns a float gauge's data points like Points.
func FloatPoints(tb testing.TB, m metricdata.Metrics) map[string]float64 {
	tb.Helper()
	d, ok := m.Data.(metricdata.Gauge[float64])
	if !ok {
		tb.Fatalf("metric %q: not a float64 gauge: %T", m.Name, m.Data)
	}
	out := map[string]float64{}
	for _, p := range d.DataPoints {
		out[encode(p.Attributes)] = p.Value
	}
	return out
}

// HistogramCounts returns a float histogram's sample counts like Points.
func HistogramCounts(tb testing.TB, m metricdata.Metrics) map[string]uint64 {
	tb.Helper()
	d, ok := m.Data.(metricdata.Histogram[float64])
	if !ok {
		tb.Fatalf("metric %q: not a float64 histogram: %T", m.Name, m.Data)
	}
	out := map[string]uint64{}
	for _, p := range d.DataPoints {
		out[encode(p.Attributes)] = p.Count
	}
	return out
}

func encode(s attribute.Set) string {
	return s.Encoded(attribute.DefaultEncoder())
}
