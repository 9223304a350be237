package recovery

import (
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/threepc/threepc/resource"
)

// Defaults of the options.
const (
	// DefaultHorizon: transactions younger than this may still be in flight
	// and are left alone. It must exceed the coordinators' decision window
	// (txmanager.Manager.DecisionWindow: 40 s with default options).
	DefaultHorizon = time.Minute
	// DefaultRetention: abort rows are kept this long, far longer than any
	// coordinator's decision deadline, so that a paused coordinator can
	// never decide commit after recovery rolled its branches back.
	DefaultRetention = 24 * time.Hour
	// DefaultTombstoneRetention: committed tombstones (one per committed
	// transaction, so many more than abort rows) are kept this long:
	// longer than any coordinator's decision window and than the scan
	// deadline, so that no stale fence can meet their absence.
	DefaultTombstoneRetention = 15 * time.Minute
	// MinRetention is the shortest retention accepted.
	MinRetention = time.Minute
	// DefaultScanDeadline: a scan does not fence after running this long
	// (measured on its monotonic clock): its view of the markers may be
	// stale by then. Retention must be far longer.
	DefaultScanDeadline = 5 * time.Minute
)

// Clock is the scanner's time source.
type Clock interface{ Now() time.Time }

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Option configures a Scanner. Options are sealed.
type Option interface{ apply(*options) error }

type optionFunc func(*options) error

func (f optionFunc) apply(o *options) error { return f(o) }

type options struct {
	horizon    time.Duration
	retention  time.Duration
	tombstones time.Duration // retention of committed tombstones
	clock      Clock
	logger     *slog.Logger
	instanceID string
	space      string // resource.SpaceTag of the namespace
	deadline   time.Duration
	tp         trace.TracerProvider // nil: otel.GetTracerProvider()
	mp         metric.MeterProvider // nil: otel.GetMeterProvider()
	sequential bool
}

// WithSequential makes a scan call one database at a time, in resource
// name order, instead of all resources in parallel: slower, gentler on the
// databases, and deterministic (the model tests use it).
func WithSequential() Option {
	return optionFunc(func(o *options) error { o.sequential = true; return nil })
}

// WithHorizon sets the in-flight horizon (default DefaultHorizon): a
// transaction whose gtid is younger is not touched.
func WithHorizon(d time.Duration) Option {
	return optionFunc(func(o *options) error {
		if d < 0 {
			return fmt.Errorf("threepc/recovery: negative horizon %v", d)
		}
		o.horizon = d
		return nil
	})
}

// WithRetention sets how long abort rows are kept (default
// DefaultRetention, at least MinRetention).
func WithRetention(d time.Duration) Option {
	return optionFunc(func(o *options) error {
		if d < MinRetention {
			return fmt.Errorf("threepc/recovery: retention %v is shorter than %v; abort rows must outlive every coordinator's decision deadline", d, MinRetention)
		}
		o.retention = d
		return nil
	})
}

// WithNamespace sets the deployment's namespace (default ""): the scanner
// finishes only branches, and touches only marker rows, of this
// namespace. It must be the one the coordinators use
// (txmanager.WithNamespace).
func WithNamespace(ns string) Option {
	return optionFunc(func(o *options) error {
		if err := resource.ValidateNamespace(ns); err != nil {
			return fmt.Errorf("threepc/recovery: %w", err)
		}
		o.space = resource.SpaceTag(ns)
		return nil
	})
}

// WithScanDeadline sets how long a scan may run (default
// DefaultScanDeadline): it fences only before that deadline, and its
// database calls are cancelled at it (the listings at a quarter of it
// each, so that one hung database is reported unreachable and the others
// are still resolved). It must be far shorter than the retention.
func WithScanDeadline(d time.Duration) Option {
	return optionFunc(func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("threepc/recovery: scan deadline must be positive, got %v", d)
		}
		o.deadline = d
		return nil
	})
}

// WithTombstoneRetention sets how long committed tombstones are kept
// (default DefaultTombstoneRetention, at least MinRetention and twice the
// scan deadline).
func WithTombstoneRetention(d time.Duration) Option {
	return optionFunc(func(o *options) error {
		if d < MinRetention {
			return fmt.Errorf("threepc/recovery: tombstone retention %v is shorter than %v", d, MinRetention)
		}
		o.tombstones = d
		return nil
	})
}

// WithClock sets the clock (for tests).
func WithClock(c Clock) Option {
	return optionFunc(func(o *options) error { o.clock = c; return nil })
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return optionFunc(func(o *options) error { o.logger = l; return nil })
}

// WithInstanceID sets the owner recorded in abort rows this scanner
// writes.
func WithInstanceID(id string) Option {
	return optionFunc(func(o *options) error {
		if id == "" || len(id) > resource.MaxOwnerLen {
			return fmt.Errorf("threepc/recovery: instance id must be 1 to %d bytes", resource.MaxOwnerLen)
		}
		o.instanceID = id
		return nil
	})
}
