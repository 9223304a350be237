package otlpsetup

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"

	"go.opentelemetry.io/otel"
	colmetricpb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"
)

var otelVars = []string{
	"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
	"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
	"OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
}

// clearEnv empties every variable Setup looks at, for the test's duration.
func clearEnv(t *testing.T) {
	for _, v := range otelVars {
		t.Setenv(v, "")
	}
}

func TestFromEnv(t *testing.T) {
	cases := []struct {
		env  map[string]string
		want Enabled
		err  bool
	}{
		{env: nil, want: Enabled{}},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
			want: Enabled{Traces: true, Metrics: true, TracesProtocol: "http/protobuf", MetricsProtocol: "http/protobuf"}},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
			want: Enabled{Traces: true, TracesProtocol: "grpc"}},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "x", "OTEL_METRICS_EXPORTER": "none",
			"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"},
			want: Enabled{Traces: true, TracesProtocol: "http/protobuf"}},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "x", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, err: true},
	}
	for i, c := range cases {
		got, err := fromEnv(func(k string) string { return c.env[k] })
		if (err != nil) != c.err || got != c.want {
			t.Errorf("case %d: got %+v, %v; want %+v, error %v", i, got, err, c.want, c.err)
		}
	}
}

func TestSetupNothing(t *testing.T) {
	clearEnv(t)
	before := otel.GetTracerProvider()
	shutdown, err := Setup(context.Background(), "test")
	if err != nil {
		t.Fatal(err)
	}
	if otel.GetTracerProvider() != before {
		t.Fatal("Setup changed the global tracer provider with no OTLP variable set")
	}
	if err := shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestSetupHTTP exports a span and a metric through the globals to an
// OTLP/HTTP receiver inside the test.
func TestSetupHTTP(t *testing.T) {
	var (
		mu       sync.Mutex
		spans    []string
		metrics  []string
		services []string
	)
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(rw, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		var out proto.Message
		switch r.URL.Path {
		case "/v1/traces":
			var req coltracepb.ExportTraceServiceRequest
			if err := proto.Unmarshal(body, &req); err != nil {
				http.Error(rw, err.Error(), http.StatusBadRequest)
				return
			}
			for _, rs := range req.GetResourceSpans() {
				for _, kv := range rs.GetResource().GetAttributes() {
					if kv.GetKey() == "service.name" {
						services = append(services, kv.GetValue().GetStringValue())
					}
				}
				for _, ss := range rs.GetScopeSpans() {
					for _, s := range ss.GetSpans() {
						spans = append(spans, s.GetName())
					}
				}
			}
			out = &coltracepb.ExportTraceServiceResponse{}
		case "/v1/metrics":
			var req colmetricpb.ExportMetricsServiceRequest
			if err := proto.Unmarshal(body, &req); err != nil {
				http.Error(rw, err.Error(), http.StatusBadRequest)
				return
			}
			for _, rm := range req.GetResourceMetrics() {
				for _, sm := range rm.GetScopeMetrics() {
					for _, m := range sm.GetMetrics() {
						metrics = append(metrics, m.GetName())
					}
				}
			}
			out = &colmetricpb.ExportMetricsServiceResponse{}
		default:
			http.NotFound(rw, r)
			return
		}
		b, _ := proto.Marshal(out)
		rw.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = rw.Write(b)
	}))
	defer srv.Close()

	clearEnv(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL)
	t.Setenv("OTEL_SERVICE_NAME", "from-env")
	prevTP, prevMP := otel.GetTracerProvider(), otel.GetMeterProvider()
	defer func() { otel.SetTracerProvider(prevTP); otel.SetMeterProvider(prevMP) }()

	ctx := context.Background()
	shutdown, err := Setup(ctx, "test")
	if err != nil {
		t.Fatal(err)
	}
	_, span := otel.Tracer("test").Start(ctx, "hello")
	span.End()
	counter, err := otel.Meter("test").Int64Counter("test.count")
	if err != nil {
		t.Fatal(err)
	}
	counter.Add(ctx, 1)
	if err := shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(spans, []string{"hello"}) || !slices.Contains(metrics, "test.count") {
		t.Fatalf("received spans %v, metrics %v", spans, metrics)
	}
	if !slices.Equal(services, []string{"from-env"}) {
		t.Fatalf("service.name %v, want OTEL_SERVICE_NAME's", services)
	}
}

func TestSetupGRPC(t *testing.T) {
	clearEnv(t)
	// Nothing listens there; the gRPC exporters connect lazily and
	// shutting down with nothing buffered sends nothing.
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
	prevTP, prevMP := otel.GetTracerProvider(), otel.GetMeterProvider()
	defer func() { otel.SetTracerProvider(prevTP); otel.SetMeterProvider(prevMP) }()
	shutdown, err := Setup(context.Background(), "test")
	if err != nil {
		t.Fatal(err)
	}
	if otel.GetTracerProvider() == prevTP {
		t.Fatal("no tracer provider installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 0)
	defer cancel()
	_ = shutdown(ctx) // nothing to flush; a refused connection is not this test's business
}
