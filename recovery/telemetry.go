package recovery

import (
	"context"
	"maps"
	"slices"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/threepc/threepc/internal/telemetry"
)

// WithTracerProvider sets the provider of the scanner's tracer (scope
// tracing.ScopeName). Default: otel.GetTracerProvider() at New.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return optionFunc(func(o *options) error { o.tp = tp; return nil })
}

// WithMeterProvider sets the provider of the scanner's meter (scope
// tracing.ScopeName). Default: otel.GetMeterProvider() at New.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return optionFunc(func(o *options) error { o.mp = mp; return nil })
}

// tracedScan runs scan inside a threepc.recovery.scan span and records
// the scan's metrics.
func (s *Scanner) tracedScan(ctx context.Context, dry bool) (*Report, error) {
	ctx, span := s.tel.StartScan(ctx, dry)
	rep, err := s.scan(ctx, dry)
	span.End(s.scanResult(rep, err))
	return rep, err
}

func (s *Scanner) scanResult(rep *Report, err error) telemetry.ScanResult {
	r := telemetry.ScanResult{Resources: slices.Sorted(maps.Keys(s.res)), Err: err}
	if rep == nil {
		return r
	}
	r.Unreachable = slices.Sorted(maps.Keys(rep.Unreachable))
	r.Transactions = len(rep.Transactions)
	inDoubt := rep.InDoubt()
	r.InDoubt = len(inDoubt)
	r.OldestInDoubt = rep.OldestInDoubt()
	// A transaction counts against every resource where it holds an
	// unfinished prepared branch (the locks and, on PostgreSQL, the held
	// back VACUUM are there); with none, against its primary.
	per := map[string]*telemetry.ResourceInDoubt{}
	for _, n := range r.Resources {
		if rep.Unreachable[n] == nil {
			per[n] = &telemetry.ResourceInDoubt{Resource: n}
		}
	}
	for _, t := range inDoubt {
		at := map[string]bool{}
		for _, b := range t.Branches {
			if !b.Done {
				at[b.Resource] = true
			}
		}
		if len(at) == 0 && t.Primary != "" {
			at[t.Primary] = true
		}
		for n := range at {
			if p := per[n]; p != nil {
				p.Count++
				p.Oldest = max(p.Oldest, t.Age)
			}
		}
	}
	for _, n := range r.Resources {
		if p := per[n]; p != nil {
			r.PerResource = append(r.PerResource, *p)
		}
	}
	for _, n := range slices.Sorted(maps.Keys(rep.OtherPrepared)) {
		o := rep.OtherPrepared[n]
		r.OtherPrepared = append(r.OtherPrepared, telemetry.ResourceInDoubt{Resource: n, Count: o.Count, Oldest: o.Oldest})
	}
	return r
}

// resolution summarises a transaction's report for its span.
func resolution(t *TxReport, dry bool) telemetry.Resolution {
	r := telemetry.Resolution{
		Action: string(t.Action), Reason: t.Reason, Primary: t.Primary, Participants: t.Participants,
		Age: t.Age, Branches: len(t.Branches), DryRun: dry, Err: t.Err,
	}
	for _, b := range t.Branches {
		if b.Done {
			r.BranchesDone++
		}
	}
	if r.Action == "" {
		// resolve leaves the action empty only when marker rows alone
		// were found and kept; say so rather than record "".
		r.Action = "none"
	}
	return r
}
