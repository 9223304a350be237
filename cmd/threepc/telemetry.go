package main

import (
	"context"

	"github.com/threepc/threepc/tracing/otlpsetup"
)

// setupTelemetry is the single place where OpenTelemetry export is
// installed for every command (called from the root command's
// PersistentPreRunE; run calls shutdown after the command, whatever its
// outcome, and it flushes what is buffered). otlpsetup changes nothing
// unless OTEL_EXPORTER_OTLP_* variables ask for export; the coordinator
// and the scanner use the global providers it installs.
func setupTelemetry(ctx context.Context) (shutdown func(context.Context) error, err error) {
	return otlpsetup.Setup(ctx, "threepc")
}
