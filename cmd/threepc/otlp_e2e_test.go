package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	colmetricpb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricpb "go.opentelemetry.io/proto/otlp/metrics/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/tracing"
)

// otlpSink keeps every export request an OTLP receiver was sent.
type otlpSink struct {
	mu      sync.Mutex
	traces  []*coltracepb.ExportTraceServiceRequest
	metrics []*colmetricpb.ExportMetricsServiceRequest
}

func (s *otlpSink) addTraces(r *coltracepb.ExportTraceServiceRequest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.traces = append(s.traces, r)
}

func (s *otlpSink) addMetrics(r *colmetricpb.ExportMetricsServiceRequest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.metrics = append(s.metrics, r)
}

// take returns what arrived since the last take, and forgets it.
func (s *otlpSink) take() ([]*coltracepb.ExportTraceServiceRequest, []*colmetricpb.ExportMetricsServiceRequest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, m := s.traces, s.metrics
	s.traces, s.metrics = nil, nil
	return t, m
}

// grpcTraces and grpcMetrics are the two OTLP gRPC services, on the
// official service definitions.
type grpcTraces struct {
	coltracepb.UnimplementedTraceServiceServer
	sink *otlpSink
}

func (g grpcTraces) Export(_ context.Context, r *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	g.sink.addTraces(r)
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

type grpcMetrics struct {
	colmetricpb.UnimplementedMetricsServiceServer
	sink *otlpSink
}

func (g grpcMetrics) Export(_ context.Context, r *colmetricpb.ExportMetricsServiceRequest) (*colmetricpb.ExportMetricsServiceResponse, error) {
	g.sink.addMetrics(r)
	return &colmetricpb.ExportMetricsServiceResponse{}, nil
}

// startGRPCReceiver serves OTLP/gRPC on a loopback port and returns the
// endpoint for OTEL_EXPORTER_OTLP_ENDPOINT.
func startGRPCReceiver(t *testing.T, sink *otlpSink) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, grpcTraces{sink: sink})
	colmetricpb.RegisterMetricsServiceServer(srv, grpcMetrics{sink: sink})
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return "http://" + lis.Addr().String()
}

// startHTTPReceiver serves OTLP/HTTP (binary protobuf POSTs to /v1/traces
// and /v1/metrics) on a loopback port.
func startHTTPReceiver(t *testing.T, sink *otlpSink) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/x-protobuf" {
			http.Error(w, "want a POST of application/x-protobuf", http.StatusUnsupportedMediaType)
			return
		}
		var body io.Reader = r.Body
		if r.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			body = zr
		}
		raw, err := io.ReadAll(body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var resp proto.Message
		switch r.URL.Path {
		case "/v1/traces":
			req := &coltracepb.ExportTraceServiceRequest{}
			if err := proto.Unmarshal(raw, req); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			sink.addTraces(req)
			resp = &coltracepb.ExportTraceServiceResponse{}
		case "/v1/metrics":
			req := &colmetricpb.ExportMetricsServiceRequest{}
			if err := proto.Unmarshal(raw, req); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			sink.addMetrics(req)
			resp = &colmetricpb.ExportMetricsServiceResponse{}
		default:
			http.NotFound(w, r)
			return
		}
		out, _ := proto.Marshal(resp)
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// span is one received span, flattened.
type span struct {
	name, trace, id, parent string
	kind                    tracepb.Span_SpanKind
	attrs                   map[string]string
	errStatus               bool
}

func attrString(v *commonpb.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_IntValue:
		return strconv.FormatInt(x.IntValue, 10)
	case *commonpb.AnyValue_BoolValue:
		return strconv.FormatBool(x.BoolValue)
	case *commonpb.AnyValue_DoubleValue:
		return strconv.FormatFloat(x.DoubleValue, 'g', -1, 64)
	case *commonpb.AnyValue_ArrayValue:
		var parts []string
		for _, e := range x.ArrayValue.GetValues() {
			parts = append(parts, attrString(e))
		}
		return strings.Join(parts, ",")
	}
	return fmt.Sprint(v)
}

func attrMap(kvs []*commonpb.KeyValue) map[string]string {
	m := map[string]string{}
	for _, kv := range kvs {
		m[kv.GetKey()] = attrString(kv.GetValue())
	}
	return m
}

// spansOf flattens the spans of threepc's instrumentation scope, checking
// that each batch says which service sent it.
func spansOf(t *testing.T, reqs []*coltracepb.ExportTraceServiceRequest) []span {
	t.Helper()
	var out []span
	for _, req := range reqs {
		for _, rs := range req.GetResourceSpans() {
			if svc := attrMap(rs.GetResource().GetAttributes())["service.name"]; svc != "threepc" {
				t.Errorf("spans from service.name %q, want threepc", svc)
			}
			for _, ss := range rs.GetScopeSpans() {
				if ss.GetScope().GetName() != tracing.ScopeName {
					continue
				}
				for _, s := range ss.GetSpans() {
					out = append(out, span{
						name: s.GetName(), trace: hex.EncodeToString(s.GetTraceId()),
						id: hex.EncodeToString(s.GetSpanId()), parent: hex.EncodeToString(s.GetParentSpanId()),
						kind: s.GetKind(), attrs: attrMap(s.GetAttributes()),
						errStatus: s.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR,
					})
				}
			}
		}
	}
	return out
}

// point is one received metric data point: its attributes and value (the
// sum or gauge value, or a histogram's count).
type point struct {
	attrs map[string]string
	value float64
}

// metricsOf returns the data points of threepc's metrics by name, from the
// last export that has each (the SDK exports cumulative totals).
func metricsOf(reqs []*colmetricpb.ExportMetricsServiceRequest) map[string][]point {
	out := map[string][]point{}
	for _, req := range reqs {
		for _, rm := range req.GetResourceMetrics() {
			for _, sm := range rm.GetScopeMetrics() {
				if sm.GetScope().GetName() != tracing.ScopeName {
					continue
				}
				for _, m := range sm.GetMetrics() {
					var ps []point
					num := func(dps []*metricpb.NumberDataPoint) {
						for _, dp := range dps {
							v := dp.GetAsDouble()
							if _, ok := dp.GetValue().(*metricpb.NumberDataPoint_AsInt); ok {
								v = float64(dp.GetAsInt())
							}
							ps = append(ps, point{attrMap(dp.GetAttributes()), v})
						}
					}
					switch d := m.GetData().(type) {
					case *metricpb.Metric_Sum:
						num(d.Sum.GetDataPoints())
					case *metricpb.Metric_Gauge:
						num(d.Gauge.GetDataPoints())
					case *metricpb.Metric_Histogram:
						for _, dp := range d.Histogram.GetDataPoints() {
							ps = append(ps, point{attrMap(dp.GetAttributes()), float64(dp.GetCount())})
						}
					}
					out[m.GetName()] = ps
				}
			}
		}
	}
	return out
}

// sum adds the values of the points whose attributes include every
// key=value of match.
func sum(ps []point, match ...string) float64 {
	var n float64
outer:
	for _, p := range ps {
		for i := 0; i+1 < len(match); i += 2 {
			if p.attrs[match[i]] != match[i+1] {
				continue outer
			}
		}
		n += p.value
	}
	return n
}

// otlpEnv is the environment of a threepc process exporting to endpoint.
// The batch span processor and the metric reader wait ten minutes, so
// everything that arrives was sent by the flush at exit.
func otlpEnv(endpoint, protocol string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OTEL_") {
			env = append(env, kv)
		}
	}
	return append(env,
		"OTEL_EXPORTER_OTLP_ENDPOINT="+endpoint,
		"OTEL_EXPORTER_OTLP_PROTOCOL="+protocol,
		"OTEL_BSP_SCHEDULE_DELAY=600000",
		"OTEL_BSP_MAX_QUEUE_SIZE=1000000",
		"OTEL_METRIC_EXPORT_INTERVAL=600000",
	)
}

// cliEnv is cli with an environment.
func cliEnv(t *testing.T, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("threepc %v: %v", args, err)
	}
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

// TestOTLPExport runs the command as a subprocess against an OTLP
// receiver inside the test, over gRPC and over HTTP, and checks what
// arrives: a bank run's span trees and metrics, a recovery's scan and
// resolve spans and metrics, and, after a Ctrl-C in the middle of a run,
// the spans of every transaction that finished before it.
func TestOTLPExport(t *testing.T) {
	for _, protocol := range []string{"grpc", "http/protobuf"} {
		t.Run(strings.ReplaceAll(protocol, "/", "_"), func(t *testing.T) {
			sink := &otlpSink{}
			endpoint := startHTTPReceiver(t, sink)
			if protocol == "grpc" {
				endpoint = startGRPCReceiver(t, sink)
			}
			env := otlpEnv(endpoint, protocol)
			d := newDBs(t)
			d.setUp(t, 100)
			sink.take() // what migrate and setup sent (nothing of threepc's scope)

			t.Run("bank run", func(t *testing.T) { testOTLPBankRun(t, d, sink, env) })
			t.Run("recover", func(t *testing.T) { testOTLPRecover(t, d, sink, env) })
			t.Run("interrupted", func(t *testing.T) { testOTLPInterrupted(t, d, sink, env) })
		})
	}
}

var committedRE = regexp.MustCompile(`(?m)^committed\s+(\d+)`)

func committedCount(t *testing.T, r result) int {
	t.Helper()
	m := committedRE.FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("no committed count in the output:\n%s", r)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// dbAttrs are the semantic-convention attributes a database call's span
// must carry, by resource name.
func (d dbs) dbAttrs(t *testing.T) map[string]map[string]string {
	t.Helper()
	attrs := func(system string, srv *harness.Server, db string) map[string]string {
		host, port := splitHostPort(srv.Addr())
		return map[string]string{"db.system.name": system, "db.namespace": db, "server.address": host, "server.port": port}
	}
	// THREEPC_TEST_MYSQL may name a MySQL server.
	my := "mariadb"
	var version string
	db := d.sqlDB(t, harness.MariaDB)
	if err := db.QueryRow("SELECT VERSION()").Scan(&version); err != nil {
		t.Fatal(err)
	}
	db.Close() // settle waits for every session to end
	if !strings.Contains(strings.ToLower(version), "mariadb") {
		my = "mysql"
	}
	return map[string]map[string]string{
		"pg":    attrs("postgresql", d.pg, d.pgDB),
		"maria": attrs(my, d.my, d.myDB),
	}
}

// checkDBSpan checks one threepc.branch.* span: a CLIENT span whose
// db.operation.name is its name's suffix, with the attributes (dbAttrs)
// of its resource's database.
func checkDBSpan(t *testing.T, byResource map[string]map[string]string, s span) {
	t.Helper()
	if s.kind != tracepb.Span_SPAN_KIND_CLIENT {
		t.Errorf("%s: kind %v, want CLIENT", s.name, s.kind)
	}
	if op := strings.TrimPrefix(s.name, "threepc.branch."); s.attrs["db.operation.name"] != op {
		t.Errorf("%s: db.operation.name %q, want %q", s.name, s.attrs["db.operation.name"], op)
	}
	want, ok := byResource[s.attrs["threepc.resource"]]
	if !ok {
		t.Errorf("%s: threepc.resource %q, want pg or maria", s.name, s.attrs["threepc.resource"])
		return
	}
	for k, v := range want {
		if s.attrs[k] != v {
			t.Errorf("%s on %s: %s = %q, want %q", s.name, s.attrs["threepc.resource"], k, s.attrs[k], v)
		}
	}
}

// children indexes spans by parent span id.
func children(spans []span) map[string][]span {
	m := map[string][]span{}
	for _, s := range spans {
		m[s.parent] = append(m[s.parent], s)
	}
	return m
}

func spanNames(spans []span) []string {
	var ns []string
	for _, s := range spans {
		ns = append(ns, s.name)
	}
	slices.Sort(ns)
	return ns
}

func testOTLPBankRun(t *testing.T, d dbs, sink *otlpSink, env []string) {
	const n = 5
	dbAttrs := d.dbAttrs(t)
	r := cliEnv(t, env, d.args("bank", "run", "--transfers", fmt.Sprint(n), "--workers", "1")...)
	want(t, r, 0, "committed")
	wantQuiet(t, r)
	if got := committedCount(t, r); got != n {
		t.Fatalf("committed %d of %d transfers:\n%s", got, n, r)
	}
	traces, metrics := sink.take()
	spans := spansOf(t, traces)
	kids := children(spans)
	var txs []span
	for _, s := range spans {
		if s.name == tracing.TransactionSpanName {
			txs = append(txs, s)
		}
	}
	if len(txs) != n {
		t.Fatalf("%d transaction spans arrived, want %d; spans: %v", len(txs), n, spanNames(spans))
	}
	gtids := map[string]bool{}
	for _, tx := range txs {
		if tx.parent != "" {
			t.Errorf("transaction span %s has a parent: the bank run starts no span of its own", tx.attrs["threepc.gtid"])
		}
		if tx.attrs["threepc.outcome"] != "committed" || tx.attrs["threepc.protocol"] != "3pc" || tx.kind != tracepb.Span_SPAN_KIND_INTERNAL {
			t.Errorf("transaction span %v", tx.attrs)
		}
		if p := tx.attrs["threepc.participants"]; p != "pg,maria" && p != "maria,pg" {
			t.Errorf("threepc.participants %q, want pg and maria", p)
		}
		gtids[tx.attrs["threepc.gtid"]] = true
		// Under the transaction: one phase span per phase run, and the
		// two branches' begins.
		phases := map[string]span{}
		var begins []span
		for _, c := range kids[tx.id] {
			if c.trace != tx.trace {
				t.Errorf("%s in another trace than its transaction", c.name)
			}
			switch {
			case c.name == "threepc.branch.begin":
				begins = append(begins, c)
			case strings.HasPrefix(c.name, "threepc.branch."):
				t.Errorf("%s directly under the transaction", c.name)
			default:
				if _, dup := phases[c.name]; dup {
					t.Errorf("two %s spans in one transaction", c.name)
				}
				phases[c.name] = c
			}
		}
		if len(begins) != 2 {
			t.Errorf("%d begin spans under the transaction, want 2", len(begins))
		}
		for _, p := range []string{"threepc.prepare", "threepc.decide", "threepc.precommit", "threepc.commit", "threepc.cleanup"} {
			if _, ok := phases[p]; !ok {
				t.Errorf("no %s span under transaction %s; its children: %v", p, tx.attrs["threepc.gtid"], spanNames(kids[tx.id]))
			}
		}
		// Under each phase: only database calls. With the defaults
		// (logging last resource) the other branch prepares and
		// commits, and the primary commits one-phase with its decision
		// row.
		primary := tx.attrs["threepc.primary"]
		other := "pg"
		if primary == "pg" {
			other = "maria"
		}
		for name, ph := range phases {
			calls := kids[ph.id]
			for _, c := range calls {
				if !strings.HasPrefix(c.name, "threepc.branch.") {
					t.Errorf("%s under %s", c.name, name)
				}
				checkDBSpan(t, dbAttrs, c)
			}
			perRes := map[string]int{}
			for _, c := range calls {
				perRes[c.name+"@"+c.attrs["threepc.resource"]]++
			}
			switch name {
			case "threepc.prepare":
				if perRes["threepc.branch.prepare@"+other] != 1 || perRes["threepc.branch.prepare@"+primary] != 0 {
					t.Errorf("prepare phase calls %v, want one prepare, at %s (not at the primary %s)", perRes, other, primary)
				}
			case "threepc.commit":
				if perRes["threepc.branch.commit@"+other] != 1 || len(perRes) != 1 {
					t.Errorf("commit phase calls %v, want one commit, at %s", perRes, other)
				}
			case "threepc.decide":
				if perRes["threepc.branch.commit_with_marker@"+primary] != 1 {
					t.Errorf("decide phase calls %v, want the primary %s's commit with its decision row", perRes, primary)
				}
			}
		}
		for _, b := range begins {
			checkDBSpan(t, dbAttrs, b)
		}
	}
	if len(gtids) != n {
		t.Errorf("%d distinct gtids in %d transaction spans", len(gtids), n)
	}
	for _, s := range spans {
		if s.errStatus {
			t.Errorf("span %s has status Error: %v", s.name, s.attrs)
		}
	}

	ms := metricsOf(metrics)
	if got := sum(ms["threepc.transactions"], "threepc.outcome", "committed", "threepc.protocol", "3pc"); got != n {
		t.Errorf("threepc.transactions{committed,3pc} = %v, want %d; points %v", got, n, ms["threepc.transactions"])
	}
	if got := sum(ms["threepc.transaction.duration"], "threepc.outcome", "committed"); got != n {
		t.Errorf("threepc.transaction.duration count %v, want %d", got, n)
	}
	for _, p := range []string{"prepare", "decide", "precommit", "commit"} {
		if got := sum(ms["threepc.phase.duration"], "threepc.phase", p); got < n {
			t.Errorf("threepc.phase.duration{%s} count %v, want at least %d; points %v", p, got, n, ms["threepc.phase.duration"])
		}
	}
}

var killedRE = regexp.MustCompile(`SIGKILL now at after-decide of transaction (\S+)`)

func testOTLPRecover(t *testing.T, d dbs, sink *otlpSink, env []string) {
	dbAttrs := d.dbAttrs(t)
	// A coordinator dies after its decision (no OTLP there: SIGKILL
	// flushes nothing); recovery commits the transaction.
	r := cli(t, d.args("demo-child", "--kill-at", "after-decide", "--kill-after", "3", "--workers", "1", "--duration", "60s")...)
	m := killedRE.FindStringSubmatch(r.stdout)
	if r.code != -1 || m == nil {
		t.Fatalf("child did not kill itself: %s", r)
	}
	gtid := m[1]
	r = cliEnv(t, env, d.args("recover", "--horizon", "0", "--wait", "20s")...)
	want(t, r, 0, "commit", "nothing in doubt")
	wantQuiet(t, r, recoveryWarnings...)
	traces, metrics := sink.take()
	spans := spansOf(t, traces)
	kids := children(spans)
	scans := 0
	var resolved []span
	for _, s := range spans {
		if s.name != tracing.ScanSpanName {
			continue
		}
		scans++
		if s.parent != "" {
			t.Errorf("scan span with a parent")
		}
		if s.attrs["threepc.recovery.dry_run"] != "false" || s.attrs["threepc.recovery.resources"] == "" || s.attrs["threepc.recovery.result"] == "" {
			t.Errorf("scan span attributes %v", s.attrs)
		}
		for _, c := range kids[s.id] {
			switch {
			case c.name == tracing.ResolveSpanName:
				if c.attrs["threepc.gtid"] == gtid {
					resolved = append(resolved, c)
				}
			case strings.HasPrefix(c.name, "threepc.branch."):
				checkDBSpan(t, dbAttrs, c) // the listings
			default:
				t.Errorf("%s under a scan", c.name)
			}
		}
	}
	if scans == 0 {
		t.Fatalf("no %s span arrived; spans: %v", tracing.ScanSpanName, spanNames(spans))
	}
	var commit *span
	for i, s := range resolved {
		if s.attrs["threepc.recovery.action"] == "commit" {
			commit = &resolved[i]
		}
	}
	if commit == nil {
		t.Fatalf("no %s span with action commit for %s; resolve spans of it: %v", tracing.ResolveSpanName, gtid, resolved)
	}
	// One prepared branch: with logging last resource (the default) the
	// primary committed with its decision row, and only the other waits.
	if commit.attrs["threepc.primary"] == "" || commit.attrs["threepc.recovery.reason"] == "" || commit.attrs["threepc.recovery.branches"] != "1" {
		t.Errorf("resolve span attributes %v", commit.attrs)
	}
	calls := kids[commit.id]
	if len(calls) == 0 {
		t.Errorf("no database calls under the resolve span")
	}
	for _, c := range calls {
		checkDBSpan(t, dbAttrs, c)
	}

	ms := metricsOf(metrics)
	if got := sum(ms["threepc.recovery.scans"]); got < 1 || got != float64(scans) {
		t.Errorf("threepc.recovery.scans = %v, want the %d scans traced", got, scans)
	}
	if got := sum(ms["threepc.recovery.actions"], "threepc.recovery.action", "commit"); got < 1 {
		t.Errorf("threepc.recovery.actions{commit} = %v, want at least 1; points %v", got, ms["threepc.recovery.actions"])
	}
	for _, name := range []string{"threepc.indoubt.transactions", "threepc.indoubt.oldest_age"} {
		for _, res := range []string{"pg", "maria"} {
			ps := ms[name]
			if !slices.ContainsFunc(ps, func(p point) bool { return p.attrs["threepc.resource"] == res }) {
				t.Errorf("%s has no point for %s: %v", name, res, ps)
			}
		}
	}
	// The last scan found nothing in doubt.
	if got := sum(ms["threepc.indoubt.transactions"]); got != 0 {
		t.Errorf("threepc.indoubt.transactions = %v after recovery, want 0", got)
	}
	d.settle(t)
	sink.take()
}

// testOTLPInterrupted sends SIGINT to a long bank run: the command stops,
// and the flush at exit delivers the span of every transaction that
// committed before it.
func testOTLPInterrupted(t *testing.T, d dbs, sink *otlpSink, env []string) {
	cmd := exec.Command(bin, d.args("bank", "run", "--duration", "60s", "--workers", "2")...)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-exited
		}
	}()
	// Wait until some transfers committed: their ledger rows are visible.
	pg := d.sqlDB(t, harness.Postgres)
	deadline := time.Now().Add(time.Minute)
	for {
		var rows int
		if err := pg.QueryRow("SELECT COUNT(*) FROM threepc_bank_ledger").Scan(&rows); err != nil {
			t.Fatal(err)
		}
		if rows >= 20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d ledger rows after a minute", rows)
		}
		time.Sleep(50 * time.Millisecond)
	}
	pg.Close() // settle waits for every session to end
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(time.Minute):
		t.Fatalf("bank run did not exit within a minute of SIGINT:\n%s%s", out.String(), errb.String())
	}
	r := result{code: cmd.ProcessState.ExitCode(), stdout: out.String(), stderr: errb.String()}
	want(t, r, 1, "interrupted")
	committed := committedCount(t, r)
	if committed == 0 {
		t.Fatalf("nothing committed before SIGINT:\n%s", r)
	}
	traces, metrics := sink.take()
	spans := spansOf(t, traces)
	got := 0
	for _, s := range spans {
		if s.name == tracing.TransactionSpanName && s.attrs["threepc.outcome"] == "committed" {
			got++
		}
	}
	if got != committed {
		t.Errorf("%d committed transaction spans arrived, the run reported %d committed", got, committed)
	}
	ms := metricsOf(metrics)
	if n := sum(ms["threepc.transactions"], "threepc.outcome", "committed"); n != float64(committed) {
		t.Errorf("threepc.transactions{committed} = %v, the run reported %d", n, committed)
	}
	t.Logf("interrupted after %d committed transfers; %d spans arrived", committed, len(spans))
	d.settle(t)
	d.wantChecked(t, 200000)
}
