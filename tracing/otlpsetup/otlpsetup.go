// Package otlpsetup installs OpenTelemetry SDK providers that export
// threepc's traces and metrics over OTLP, configured by the standard
// OTEL_* environment variables. It is for programs (the threepc command,
// an application's main): it reads the environment and sets the otel
// globals, which library code never does. Libraries take
// WithTracerProvider / WithMeterProvider options instead.
//
// Traces are exported when OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set, metrics when
// OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_METRICS_ENDPOINT is
// set; OTEL_TRACES_EXPORTER=none or OTEL_METRICS_EXPORTER=none turns one
// off. The protocol is OTEL_EXPORTER_OTLP_{TRACES_,METRICS_,}PROTOCOL:
// "http/protobuf" (the default) or "grpc". Everything else (headers,
// timeouts, compression, TLS, OTEL_SERVICE_NAME,
// OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER,
// OTEL_METRIC_EXPORT_INTERVAL) is read by the SDK and the exporters as the
// specification says.
package otlpsetup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdkresource "go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Enabled reports what the environment asks Setup to export.
type Enabled struct {
	Traces, Metrics bool
	// TracesProtocol and MetricsProtocol are "http/protobuf" or "grpc".
	TracesProtocol, MetricsProtocol string
}

// FromEnv reads what the environment asks for, without changing anything.
func FromEnv() (Enabled, error) { return fromEnv(os.Getenv) }

func fromEnv(getenv func(string) string) (Enabled, error) {
	var e Enabled
	common := getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != ""
	e.Traces = (common || getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != "") &&
		!strings.EqualFold(getenv("OTEL_TRACES_EXPORTER"), "none")
	e.Metrics = (common || getenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") != "") &&
		!strings.EqualFold(getenv("OTEL_METRICS_EXPORTER"), "none")
	var err error
	if e.Traces {
		if e.TracesProtocol, err = protocol(getenv, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"); err != nil {
			return Enabled{}, err
		}
	}
	if e.Metrics {
		if e.MetricsProtocol, err = protocol(getenv, "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"); err != nil {
			return Enabled{}, err
		}
	}
	return e, nil
}

func protocol(getenv func(string) string, specific string) (string, error) {
	p := getenv(specific)
	if p == "" {
		p = getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	switch p {
	case "", "http/protobuf":
		return "http/protobuf", nil
	case "grpc":
		return "grpc", nil
	}
	return "", fmt.Errorf("threepc/otlpsetup: OTLP protocol %q is not supported (want http/protobuf or grpc)", p)
}

// Setup installs global tracer and meter providers exporting over OTLP, as
// the environment asks (see the package documentation), and the W3C trace
// context and baggage propagators. serviceName is the default
// service.name; OTEL_SERVICE_NAME overrides it. When the environment asks
// for nothing, Setup changes nothing and shutdown is a no-op.
//
// Call shutdown before the program exits: it flushes what is buffered.
func Setup(ctx context.Context, serviceName string) (shutdown func(context.Context) error, err error) {
	en, err := FromEnv()
	if err != nil {
		return nil, err
	}
	var shutdowns []func(context.Context) error
	shutdown = func(ctx context.Context) error {
		var errs []error
		for _, f := range shutdowns {
			errs = append(errs, f(ctx))
		}
		return errors.Join(errs...)
	}
	if !en.Traces && !en.Metrics {
		return shutdown, nil
	}
	res, err := sdkresource.New(ctx,
		sdkresource.WithAttributes(attribute.String("service.name", serviceName)),
		sdkresource.WithFromEnv(),
		sdkresource.WithTelemetrySDK(),
	)
	if err != nil && res == nil {
		return nil, fmt.Errorf("threepc/otlpsetup: resource: %w", err)
	}
	var tp *sdktrace.TracerProvider
	if en.Traces {
		var exp sdktrace.SpanExporter
		if en.TracesProtocol == "grpc" {
			exp, err = otlptracegrpc.New(ctx)
		} else {
			exp, err = otlptracehttp.New(ctx)
		}
		if err != nil {
			return nil, fmt.Errorf("threepc/otlpsetup: trace exporter: %w", err)
		}
		tp = sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
		shutdowns = append(shutdowns, tp.Shutdown)
	}
	if en.Metrics {
		var exp sdkmetric.Exporter
		if en.MetricsProtocol == "grpc" {
			exp, err = otlpmetricgrpc.New(ctx)
		} else {
			exp, err = otlpmetrichttp.New(ctx)
		}
		if err != nil {
			serr := shutdown(ctx)
			return nil, errors.Join(fmt.Errorf("threepc/otlpsetup: metric exporter: %w", err), serr)
		}
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewPeriodicReader(exp)), sdkmetric.WithResource(res))
		shutdowns = append(shutdowns, mp.Shutdown)
		otel.SetMeterProvider(mp)
	}
	// The tracer provider goes in last, once nothing can fail any more.
	if tp != nil {
		otel.SetTracerProvider(tp)
	}
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	return shutdown, nil
}
