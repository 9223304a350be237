package main

import "context"

// setupTelemetry is the single place where OpenTelemetry export is
// installed for every command (called from the root command's
// PersistentPreRunE, shut down in PersistentPostRunE).
//
// TODO(otlpsetup): once package tracing/otlpsetup exists, call its Setup
// here; it installs global providers only when OTEL_EXPORTER_OTLP_*
// variables are set, and returns their shutdown function.
func setupTelemetry(ctx context.Context) (shutdown func(context.Context) error, err error) {
	_ = ctx
	return func(context.Context) error { return nil }, nil
}
