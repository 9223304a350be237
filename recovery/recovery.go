// Package recovery finishes distributed transactions whose coordinator
// is gone: the termination protocol of threepc.
//
// A Scanner reads every resource's marker rows and prepared branches and,
// per global transaction of its namespace, commits (a precommit row exists
// anywhere), rolls back (an abort row at the primary), fences and rolls
// back (no row, older than the in-flight horizon: an abort row is inserted
// at the primary first, as a compare-and-set), or leaves it in doubt (the
// primary cannot be reached). A transaction counts as committed only on
// evidence: each branch's own evidence row, read from another session.
// Once every branch is proven committed the primary's decision row
// becomes a tombstone, kept for the retention period like abort rows. A
// branch that contradicts the decision is a heuristic outcome: reported,
// never papered over. The scanner is idempotent and safe to run
// concurrently with other scanners and with live coordinators on other
// instances.
//
// Run a scan at start-up, before serving traffic, and keep one running
// in the background:
//
//	sc, err := recovery.New(resources)
//	if _, err := sc.ScanOnce(ctx); err != nil { ... }
//	go sc.Run(ctx, time.Minute, nil)
package recovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/threepc/threepc/internal/fanout"
	"github.com/threepc/threepc/internal/telemetry"
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

// Scanner resolves in-doubt transactions over a set of resources.
type Scanner struct {
	res  map[string]resource.Resource
	opts options
	tel  *telemetry.Scanner
}

// New returns a scanner over resources (the same set, by name, as the
// coordinators use; a resource missing here makes its transactions
// unresolvable when it is their primary).
func New(resources []resource.Resource, opts ...Option) (*Scanner, error) {
	s := &Scanner{res: map[string]resource.Resource{}, opts: options{
		horizon: DefaultHorizon, retention: DefaultRetention, tombstones: DefaultTombstoneRetention, clock: systemClock{},
		logger: slog.Default(), instanceID: "recovery", space: resource.SpaceTag(""),
		deadline: DefaultScanDeadline,
	}}
	for _, o := range opts {
		if err := o.apply(&s.opts); err != nil {
			return nil, err
		}
	}
	if min(s.opts.retention, s.opts.tombstones) < 2*s.opts.deadline {
		return nil, fmt.Errorf("threepc/recovery: retention %v and tombstone retention %v must be at least twice the scan deadline %v: a slow scan must never fence after the rows it read are collected", s.opts.retention, s.opts.tombstones, s.opts.deadline)
	}
	for _, r := range resources {
		if err := resource.ValidateName(r.Name()); err != nil {
			return nil, err
		}
		if _, dup := s.res[r.Name()]; dup {
			return nil, fmt.Errorf("threepc/recovery: resource %q registered twice", r.Name())
		}
		s.res[r.Name()] = r
	}
	s.tel = telemetry.NewScanner(s.opts.tp, s.opts.mp)
	return s, nil
}

// Action is what a scan did (or, for Inspect, would do) to a transaction.
type Action string

// Actions.
const (
	ActionCommit   Action = "commit"   // precommit row found: prepared branches committed
	ActionRollback Action = "rollback" // abort row at the primary: prepared branches rolled back
	ActionFence    Action = "fence"    // no row: abort row inserted at the primary, branches rolled back
	ActionCollect  Action = "collect"  // no prepared branch left: marker rows deleted
	ActionWait     Action = "wait"     // younger than the horizon, or a tombstone kept for retention
	ActionInDoubt  Action = "in-doubt" // cannot be decided or finished now; see Reason
	// ActionHeuristic: a branch contradicts the decision (decided to
	// commit, but gone without its evidence; or committed under an abort
	// row). Nothing is claimed and every row is kept; Reason says what
	// to do.
	ActionHeuristic Action = "heuristic"
)

// BranchReport is one prepared branch found by a scan.
type BranchReport struct {
	Resource   string
	XID        resource.XID
	PreparedAt time.Time // zero when the database does not record it
	Done       bool      // finished by this scan
	Err        error     // why it could not be finished
}

// TxReport is what a scan found and did for one global transaction.
type TxReport struct {
	GTID         string
	Primary      string
	Participants []string // from the marker rows and the branches seen
	Age          time.Duration
	Branches     []BranchReport
	Markers      map[string]resource.Marker // by resource
	// Lost names the branches that contradict the decision (heuristic).
	Lost   []string
	Action Action
	Reason string
	Err    error

	lateDecision bool // the deciding row was read after the branch listing
	collect      bool // delete its rows at the end of the scan
	unproven     bool // some participant's commit is not proven yet (not an error: the next scan looks again)
}

// Resolved reports whether the transaction needs nothing more.
func (t *TxReport) Resolved() bool {
	if t.Action == ActionInDoubt || t.Action == ActionHeuristic || t.Err != nil || t.unproven {
		return false
	}
	for _, b := range t.Branches {
		if !b.Done {
			return false
		}
	}
	return true
}

// Report is the result of one scan.
type Report struct {
	Started      time.Time
	Duration     time.Duration
	DryRun       bool
	Unreachable  map[string]error // resources that could not be scanned
	Transactions []TxReport       // sorted by gtid (age order)
	// Foreign counts the prepared branches of other namespaces seen and
	// left alone.
	Foreign int
}

// InDoubt returns the transactions that still need work: in doubt,
// heuristic, not finished, or waiting on a young in-flight transaction's
// prepared branches.
func (r *Report) InDoubt() []TxReport {
	var out []TxReport
	for _, t := range r.Transactions {
		if t.Action == ActionInDoubt || t.Action == ActionHeuristic || t.Err != nil || (t.Action != ActionWait && !t.Resolved()) {
			out = append(out, t)
		}
	}
	return out
}

// Heuristic returns the transactions with a heuristic outcome.
func (r *Report) Heuristic() []TxReport {
	var out []TxReport
	for _, t := range r.Transactions {
		if t.Action == ActionHeuristic {
			out = append(out, t)
		}
	}
	return out
}

// OldestInDoubt returns the age of the oldest transaction that needs
// work, or 0.
func (r *Report) OldestInDoubt() time.Duration {
	var oldest time.Duration
	for _, t := range r.InDoubt() {
		oldest = max(oldest, t.Age)
	}
	return oldest
}

// ScanOnce runs one scan and acts on what it finds. The error is non-nil
// only when the scan could not run at all; per-transaction problems are in
// the report.
func (s *Scanner) ScanOnce(ctx context.Context) (*Report, error) { return s.tracedScan(ctx, false) }

// Inspect runs a scan that changes nothing and reports what ScanOnce
// would do.
func (s *Scanner) Inspect(ctx context.Context) (*Report, error) { return s.tracedScan(ctx, true) }

type found struct {
	markers  []resource.Marker
	prepared []resource.PreparedBranch
	err      error
}

func (s *Scanner) scan(ctx context.Context, dry bool) (*Report, error) {
	rep := &Report{Started: s.opts.clock.Now(), DryRun: dry, Unreachable: map[string]error{}}
	fenceBy := rep.Started.Add(s.opts.deadline)
	names := slices.Sorted(maps.Keys(s.res))
	if len(names) == 0 {
		return nil, errors.New("threepc/recovery: no resources")
	}
	// Markers first, then prepared branches: a precommit row seen before
	// the listing proves that any branch missing from the listing was
	// committed (the decision needs every branch prepared first). The other
	// order could take a branch committed after the listing for one that
	// never existed, and collect a marker that a prepared branch needs.
	//
	// A scan is bounded by its deadline on the wall clock too, so that a
	// database that hangs (no answer, no reset) cannot stall the recovery
	// of every other: each listing phase gets a quarter of it, and a
	// resource that does not answer in time is reported unreachable.
	ctx, cancel := context.WithTimeout(ctx, s.opts.deadline)
	defer cancel()
	fs := make([]found, len(names))
	lctx, lcancel := context.WithTimeout(ctx, s.opts.deadline/4)
	s.each(len(names), func(i int) {
		n := names[i]
		octx, op := s.tel.Op(lctx, telemetry.OpListMarkers, s.res[n])
		fs[i].markers, fs[i].err = s.res[n].ListMarkers(octx)
		op.End(fs[i].err)
	})
	lcancel()
	lctx, lcancel = context.WithTimeout(ctx, s.opts.deadline/4)
	s.each(len(names), func(i int) {
		n := names[i]
		if fs[i].err == nil {
			octx, op := s.tel.Op(lctx, telemetry.OpRecover, s.res[n])
			fs[i].prepared, fs[i].err = s.res[n].Recover(octx)
			op.End(fs[i].err)
		}
	})
	lcancel()
	txs := map[string]*TxReport{}
	get := func(g string) *TxReport {
		t, ok := txs[g]
		if !ok {
			t = &TxReport{GTID: g, Markers: map[string]resource.Marker{}, Age: s.opts.clock.Now().Sub(resource.GTIDTime(g))}
			txs[g] = t
		}
		return t
	}
	for i, n := range names {
		if fs[i].err != nil {
			rep.Unreachable[n] = fs[i].err
			s.opts.logger.Warn("threepc/recovery: resource not scanned", "resource", n, "err", fs[i].err)
			continue
		}
		for _, m := range fs[i].markers {
			if !s.ours(m.Space) {
				continue
			}
			t := get(m.GTID)
			t.Markers[n] = m
			t.Primary = m.Primary
		}
		for _, p := range fs[i].prepared {
			if p.XID.Space != s.opts.space {
				rep.Foreign++
				continue
			}
			t := get(p.XID.GTID)
			t.Primary = p.XID.Primary
			t.Branches = append(t.Branches, BranchReport{Resource: n, XID: p.XID, PreparedAt: p.PreparedAt})
		}
	}
	gtids := slices.Sorted(maps.Keys(txs))
	for _, g := range gtids {
		t := txs[g]
		t.Participants = participants(t)
		rctx, span := s.tel.StartResolve(ctx, g)
		s.resolve(rctx, t, rep.Unreachable, dry, fenceBy)
		span.End(resolution(t, dry))
		rep.Transactions = append(rep.Transactions, *t)
	}
	if !dry {
		s.collectBatch(ctx, rep.Transactions)
	}
	for i := range rep.Transactions {
		s.log(&rep.Transactions[i], dry)
	}
	rep.Duration = s.opts.clock.Now().Sub(rep.Started)
	return rep, nil
}

func participants(t *TxReport) []string {
	set := map[string]bool{}
	for _, m := range t.Markers {
		for _, p := range m.Participants {
			set[p] = true
		}
	}
	for _, b := range t.Branches {
		set[b.Resource] = true
	}
	if t.Primary != "" {
		set[t.Primary] = true
	}
	return slices.Sorted(maps.Keys(set))
}

// ours reports whether a marker row's namespace tag is the scanner's.
// Rows written before namespaces existed belong to the default one.
func (s *Scanner) ours(space string) bool {
	return space == s.opts.space || space == "" && s.opts.space == resource.SpaceTag("")
}

func (s *Scanner) log(t *TxReport, dry bool) {
	if t.Action == ActionWait {
		return
	}
	lvl := slog.LevelInfo
	switch {
	case t.Action == ActionCollect && t.Err == nil:
		lvl = slog.LevelDebug // one per committed transaction: routine
	case t.Action == ActionHeuristic:
		lvl = slog.LevelError
	case !t.Resolved():
		lvl = slog.LevelWarn
	}
	var errs []string
	for _, b := range t.Branches {
		if b.Err != nil {
			errs = append(errs, b.Resource+": "+b.Err.Error())
		}
	}
	s.opts.logger.Log(context.Background(), lvl, "threepc/recovery: transaction", "gtid", t.GTID, "action", t.Action,
		"reason", t.Reason, "age", t.Age.Round(time.Millisecond), "primary", t.Primary, "branches", len(t.Branches),
		"dry_run", dry, "err", t.Err, "branch_errors", strings.Join(errs, "; "), "lost", strings.Join(t.Lost, ","))
}

// Run scans every interval until ctx is done, backing off (up to 16
// intervals) while scans leave work in doubt or resources unreachable, so
// a down database does not cause an error storm. It returns ctx's error.
// onScan, if not nil, receives every report.
func (s *Scanner) Run(ctx context.Context, interval time.Duration, onScan func(*Report)) error {
	if interval <= 0 {
		return fmt.Errorf("threepc/recovery: interval must be positive, got %v", interval)
	}
	wait := time.Duration(0)
	for {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		rep, err := s.ScanOnce(ctx)
		switch {
		case err != nil:
			s.opts.logger.Warn("threepc/recovery: scan failed", "err", err)
			wait = min(max(wait*2, interval), 16*interval)
		case len(rep.Unreachable) > 0 || len(rep.InDoubt()) > 0:
			wait = min(max(wait*2, interval), 16*interval)
		default:
			wait = interval
		}
		if onScan != nil && rep != nil {
			onScan(rep)
		}
	}
}

// each runs f(0..n-1), in parallel unless sequential (deterministic tests).
func (s *Scanner) each(n int, f func(i int)) { fanout.Each(n, s.opts.sequential, f) }
