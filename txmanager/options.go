package txmanager

import (
	"context"
	"fmt"
	"github.com/threepc/threepc/resource"
	"log/slog"
	"os"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Protocol selects the commit protocol.
type Protocol string

// The protocols. They differ in one step: 3PC writes a precommit row at
// every participant after the decision, so that recovery can finish the
// transaction while the primary is down; 2PC does not, and blocks then.
const (
	ThreePC Protocol = "3pc"
	TwoPC   Protocol = "2pc"
)

// Clock is the time source of the coordinator. Deadlines are computed
// from Now's monotonic reading, never from wall-clock differences.
type Clock interface {
	Now() time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Defaults of the options.
const (
	DefaultTimeout        = 30 * time.Second
	DefaultDecideTimeout  = 5 * time.Second
	DefaultCommitTimeout  = 30 * time.Second
	DefaultCleanupTimeout = 5 * time.Second
)

// Option configures a Manager. Options are sealed: only this package
// defines them.
type Option interface{ apply(*options) error }

type optionFunc func(*options) error

func (f optionFunc) apply(o *options) error { return f(o) }

type options struct {
	protocol       Protocol
	timeout        time.Duration
	decideTimeout  time.Duration
	commitTimeout  time.Duration
	cleanupTimeout time.Duration
	instanceID     string
	space          string // resource.SpaceTag of the namespace
	clock          Clock
	logger         *slog.Logger
	failpoint      FailpointFunc
	onePhase       bool
	lastResource   bool
	asyncCleanup   bool
	batching       bool
	pauseCleaner   bool        // tests: async clean-up never runs
	sequential     bool        // fan out one branch at a time, in order (deterministic tests)
	commitFirst    func() bool // sequential runs: whether an overlapped commit goes before its precommit row
	sleep          func(ctx context.Context, d time.Duration) error
	tracerProvider trace.TracerProvider // nil: otel.GetTracerProvider()
	meterProvider  metric.MeterProvider // nil: otel.GetMeterProvider()
}

func defaultOptions() options {
	host, _ := os.Hostname()
	return options{
		protocol:       ThreePC,
		timeout:        DefaultTimeout,
		decideTimeout:  DefaultDecideTimeout,
		commitTimeout:  DefaultCommitTimeout,
		cleanupTimeout: DefaultCleanupTimeout,
		instanceID:     fmt.Sprintf("%s/%d", host, os.Getpid()),
		space:          resource.SpaceTag(""),
		clock:          systemClock{},
		logger:         slog.Default(),
		onePhase:       true,
		batching:       true,
		lastResource:   true,
		asyncCleanup:   true,
		sleep:          sleep,
	}
}

// WithProtocol selects ThreePC (the default) or TwoPC.
func WithProtocol(p Protocol) Option {
	return optionFunc(func(o *options) error {
		if p != ThreePC && p != TwoPC {
			return fmt.Errorf("threepc: unknown protocol %q (want %q or %q)", p, ThreePC, TwoPC)
		}
		o.protocol = p
		return nil
	})
}

// WithTimeout sets the transaction timeout: the time from Begin by which
// the work and the vote (prepare) must be done. Statements run through a
// branch are cancelled when it expires, which is what breaks a distributed
// deadlock. Default DefaultTimeout.
func WithTimeout(d time.Duration) Option {
	return durationOption(d, "timeout", func(o *options) { o.timeout = d })
}

// WithDecideTimeout sets how long after the transaction timeout the
// coordinator may still try to record its decision (retrying an insert
// whose outcome is unknown). Past that decision deadline it never decides
// commit. Recovery's in-flight horizon should exceed timeout + decide
// timeout (see Manager.DecisionWindow). Default DefaultDecideTimeout.
func WithDecideTimeout(d time.Duration) Option {
	return durationOption(d, "decide timeout", func(o *options) { o.decideTimeout = d })
}

// WithCommitTimeout bounds the commit phase, which runs after the commit
// point and ignores the caller's cancellation. Branches not committed by
// then are left to recovery and reported by a CommitPendingError. Default
// DefaultCommitTimeout.
func WithCommitTimeout(d time.Duration) Option {
	return durationOption(d, "commit timeout", func(o *options) { o.commitTimeout = d })
}

// WithCleanupTimeout bounds the deletion of marker rows after a commit.
// Rows it cannot delete are collected by recovery. Default
// DefaultCleanupTimeout.
func WithCleanupTimeout(d time.Duration) Option {
	return durationOption(d, "cleanup timeout", func(o *options) { o.cleanupTimeout = d })
}

func durationOption(d time.Duration, what string, set func(*options)) Option {
	return optionFunc(func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("threepc: %s must be positive, got %v", what, d)
		}
		set(o)
		return nil
	})
}

// WithInstanceID sets the id recorded as the owner of marker rows, so an
// operator can tell which instance ran a transaction. Default
// "hostname/pid".
func WithInstanceID(id string) Option {
	return optionFunc(func(o *options) error {
		if id == "" || len(id) > 128 {
			return fmt.Errorf("threepc: instance id must be 1 to 128 bytes, got %d", len(id))
		}
		o.instanceID = id
		return nil
	})
}

// WithNamespace sets the deployment's namespace (default ""), which every
// branch id and marker row carries. Recovery finishes only branches of
// its own namespace (recovery.WithNamespace), so deployments that share a
// database, or share resource names on one server, do not finish each
// other's transactions. Coordinators and scanners of one deployment must
// use the same namespace. Resource names and namespaces together must be
// unique per database server.
func WithNamespace(ns string) Option {
	return optionFunc(func(o *options) error {
		if err := resource.ValidateNamespace(ns); err != nil {
			return fmt.Errorf("threepc: %w", err)
		}
		o.space = resource.SpaceTag(ns)
		return nil
	})
}

// WithClock sets the clock (for tests). Default: the system clock.
func WithClock(c Clock) Option {
	return optionFunc(func(o *options) error { o.clock = c; return nil })
}

// WithLogger sets the logger. Default slog.Default().
func WithLogger(l *slog.Logger) Option {
	return optionFunc(func(o *options) error { o.logger = l; return nil })
}

// WithFailpoints installs a hook called at every failpoint (for tests).
func WithFailpoints(f FailpointFunc) Option {
	return optionFunc(func(o *options) error { o.failpoint = f; return nil })
}

// WithOnePhase switches the single-participant optimization: a
// transaction that enlisted one resource commits it as a plain local
// transaction, with no prepare and no marker. Default on.
func WithOnePhase(on bool) Option {
	return optionFunc(func(o *options) error { o.onePhase = on; return nil })
}

// WithTracerProvider sets the provider of the manager's tracer (scope
// tracing.ScopeName). Default: otel.GetTracerProvider() at New.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return optionFunc(func(o *options) error { o.tracerProvider = tp; return nil })
}

// WithMeterProvider sets the provider of the manager's meter (scope
// tracing.ScopeName). Default: otel.GetMeterProvider() at New.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return optionFunc(func(o *options) error { o.meterProvider = mp; return nil })
}

// WithLastResource switches the logging-last-resource optimization
// (default off): the primary's branch is not prepared; it commits
// one-phase with the decision row inserted in its own transaction, which
// saves the primary's prepare and commit round trips. The primary is the
// first resource enlisted; its driver must implement
// resource.MarkerCommitter, or the optimization is skipped.
func WithLastResource(on bool) Option {
	return optionFunc(func(o *options) error { o.lastResource = on; return nil })
}

// WithAsyncCleanup switches asynchronous marker clean-up (default off):
// Commit returns as soon as every branch is committed, and a background
// loop deletes the marker rows in batches, one statement per resource per
// batch. Rows not deleted (a crash, Close not called) are collected by
// recovery, exactly as after a coordinator that died before its clean-up.
// Call Manager.Close at shutdown.
func WithAsyncCleanup(on bool) Option {
	return optionFunc(func(o *options) error { o.asyncCleanup = on; return nil })
}

// WithBatching switches the group commit of marker rows (default on):
// the decision rows and pre-commit rows that concurrent transactions
// insert at one resource go out as one statement
// (resource.MarkerBatcher), sent as soon as the previous batch of that
// resource returns; a transaction that finds no batch in flight sends its
// row at once. Each row keeps its own compare-and-set answer. Resources
// whose driver cannot batch (MySQL, which has no INSERT ... RETURNING)
// insert one row at a time.
func WithBatching(on bool) Option {
	return optionFunc(func(o *options) error { o.batching = on; return nil })
}
