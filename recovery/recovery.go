// Package recovery finishes distributed transactions whose coordinator
// is gone: the termination protocol of threepc.
//
// A Scanner reads every resource's marker rows and prepared branches and,
// per global transaction, commits (a precommit row exists anywhere), rolls
// back (an abort row at the primary), fences and rolls back (no row, older
// than the in-flight horizon: an abort row is inserted at the primary
// first, as a compare-and-set), or leaves it in doubt (the primary cannot
// be reached). It is idempotent and safe to run concurrently with other
// scanners and with live coordinators on other instances.
//
// Run a scan at start-up, before serving traffic, and keep one running
// in the background:
//
//	sc, err := recovery.New(resources)
//	if _, err := sc.ScanOnce(ctx); err != nil { ... }
//	go sc.Run(ctx, time.Minute)
package recovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/threepc/threepc/internal/fanout"
	"github.com/threepc/threepc/internal/seeded"
	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/tracing"
)

// Defaults of the options.
const (
	// DefaultHorizon: transactions younger than this may still be in flight
	// and are left alone. It must exceed the coordinators' decision window
	// (txmanager.Manager.DecisionWindow: 35 s with default options).
	DefaultHorizon = time.Minute
	// DefaultRetention: abort rows are kept this long, far longer than any
	// coordinator's decision deadline, so that a paused coordinator can
	// never decide commit after recovery rolled its branches back.
	DefaultRetention = 24 * time.Hour
	// MinRetention is the shortest retention accepted.
	MinRetention = time.Minute
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
	clock      Clock
	logger     *slog.Logger
	instanceID string
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
	tel  *tracing.Scanner
}

// New returns a scanner over resources (the same set, by name, as the
// coordinators use; a resource missing here makes its transactions
// unresolvable when it is their primary).
func New(resources []resource.Resource, opts ...Option) (*Scanner, error) {
	s := &Scanner{res: map[string]resource.Resource{}, opts: options{
		horizon: DefaultHorizon, retention: DefaultRetention, clock: systemClock{},
		logger: slog.Default(), instanceID: "recovery",
	}}
	for _, o := range opts {
		if err := o.apply(&s.opts); err != nil {
			return nil, err
		}
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
	s.tel = tracing.NewScanner(s.opts.tp, s.opts.mp)
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
	ActionWait     Action = "wait"     // younger than the horizon, or abort row kept for retention
	ActionInDoubt  Action = "in-doubt" // cannot be decided or finished now; see Reason
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
	Action       Action
	Reason       string
	Err          error

	lateDecision bool // the deciding row was read after the branch listing
}

// Resolved reports whether the transaction needs nothing more.
func (t *TxReport) Resolved() bool {
	if t.Action == ActionInDoubt || t.Err != nil {
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
}

// InDoubt returns the transactions that still need work: in doubt, not
// finished, or waiting on a young in-flight transaction's prepared
// branches.
func (r *Report) InDoubt() []TxReport {
	var out []TxReport
	for _, t := range r.Transactions {
		if t.Action == ActionInDoubt || t.Err != nil || (t.Action != ActionWait && !t.Resolved()) {
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
	names := slices.Sorted(maps.Keys(s.res))
	if len(names) == 0 {
		return nil, errors.New("threepc/recovery: no resources")
	}
	// Markers first, then prepared branches: a precommit row seen before
	// the listing proves that any branch missing from the listing was
	// committed (the decision needs every branch prepared first). The other
	// order could take a branch committed after the listing for one that
	// never existed, and collect a marker that a prepared branch needs.
	fs := make([]found, len(names))
	s.each(len(names), func(i int) {
		n := names[i]
		octx, op := s.tel.Op(ctx, tracing.OpListMarkers, s.res[n])
		fs[i].markers, fs[i].err = s.res[n].ListMarkers(octx)
		op.End(fs[i].err)
	})
	s.each(len(names), func(i int) {
		n := names[i]
		if fs[i].err == nil {
			octx, op := s.tel.Op(ctx, tracing.OpRecover, s.res[n])
			fs[i].prepared, fs[i].err = s.res[n].Recover(octx)
			op.End(fs[i].err)
		}
	})
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
			t := get(m.GTID)
			t.Markers[n] = m
			t.Primary = m.Primary
		}
		for _, p := range fs[i].prepared {
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
		s.resolve(rctx, t, rep.Unreachable, dry)
		span.End(resolution(t, dry))
		rep.Transactions = append(rep.Transactions, *t)
		s.log(t, dry)
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

// resolve decides and acts on one transaction.
func (s *Scanner) resolve(ctx context.Context, t *TxReport, unreachable map[string]error, dry bool) {
	if t.Age < s.opts.horizon {
		t.Action, t.Reason = ActionWait, fmt.Sprintf("younger than the in-flight horizon (%v)", s.opts.horizon)
		return
	}
	if len(t.Branches) == 0 {
		// Nothing prepared: only marker rows, which may be collected.
		s.collect(ctx, t, unreachable, dry)
		return
	}
	primaryRow, atPrimary := t.Markers[t.Primary]
	decided := false
	for _, m := range t.Markers {
		decided = decided || m.State == resource.StatePreCommit
	}
	switch {
	case decided:
		t.Action, t.Reason = ActionCommit, "precommit row found"
		s.finish(ctx, t, true, dry)
	case atPrimary && primaryRow.State == resource.StateAbort:
		t.Action, t.Reason = ActionRollback, "abort row at the primary"
		s.finish(ctx, t, false, dry)
	default:
		s.fence(ctx, t, unreachable, dry)
	}
	if t.Action == ActionInDoubt || !t.Resolved() || dry || (t.lateDecision && !seeded.CollectAfterLateDecision.Load()) {
		return
	}
	s.collect(ctx, t, unreachable, false)
}

// fence inserts the abort row at the primary, then acts on whichever row
// is there.
func (s *Scanner) fence(ctx context.Context, t *TxReport, unreachable map[string]error, dry bool) {
	primary, ok := s.res[t.Primary]
	if !ok {
		t.Action, t.Reason = ActionInDoubt, fmt.Sprintf("primary %q is not one of this scanner's resources", t.Primary)
		return
	}
	if err := unreachable[t.Primary]; err != nil {
		t.Action, t.Reason, t.Err = ActionInDoubt, fmt.Sprintf("primary %q unreachable and no precommit row on any reachable participant", t.Primary), err
		return
	}
	if dry {
		t.Action, t.Reason = ActionFence, "no marker row: would fence at the primary and roll back"
		return
	}
	if seeded.AbortWithoutFence.Load() {
		t.Action, t.Reason = ActionFence, "seeded bug: abort without fence"
		s.finish(ctx, t, false, dry)
		return
	}
	octx, op := s.tel.Op(ctx, tracing.OpInsertMarker, primary)
	err := primary.InsertMarker(octx, resource.Marker{
		GTID: t.GTID, State: resource.StateAbort, Primary: t.Primary,
		Participants: t.Participants, Owner: s.opts.instanceID,
	})
	op.End(err)
	if errors.Is(err, resource.ErrMarkerExists) {
		var row resource.Marker
		octx, op := s.tel.Op(ctx, tracing.OpReadMarker, primary)
		row, err = primary.ReadMarker(octx, t.GTID)
		op.End(err)
		if errors.Is(err, resource.ErrNoMarker) {
			// The row that beat the fence is gone already: the coordinator
			// finished and cleaned up. The next scan sees the outcome.
			t.Action, t.Reason, t.lateDecision = ActionWait, "the fence met a marker row that is gone now; next scan re-reads", true
			return
		}
		if err == nil {
			// The decision was learned after the branch listing, so the
			// listing proves nothing about branches prepared since: this
			// scan must not collect the marker rows.
			t.lateDecision = true
			t.Markers[t.Primary] = row
			if row.State == resource.StatePreCommit {
				t.Action, t.Reason = ActionCommit, "fence lost to the coordinator's precommit row"
				s.finish(ctx, t, true, dry)
			} else {
				t.Action, t.Reason = ActionRollback, "abort row at the primary (another scanner fenced)"
				s.finish(ctx, t, false, dry)
			}
			return
		}
	}
	if err != nil {
		// The insert's outcome may be unknown: the next scan reads it.
		t.Action, t.Reason, t.Err = ActionInDoubt, "fence at the primary failed", err
		return
	}
	t.Markers[t.Primary] = resource.Marker{GTID: t.GTID, State: resource.StateAbort, Primary: t.Primary, Participants: t.Participants}
	t.Action, t.Reason = ActionFence, "no marker row; fenced at the primary"
	s.finish(ctx, t, false, dry)
}

// finish commits or rolls back every prepared branch found.
func (s *Scanner) finish(ctx context.Context, t *TxReport, commit bool, dry bool) {
	if dry {
		return
	}
	s.each(len(t.Branches), func(i int) {
		b := &t.Branches[i]
		r := s.res[b.Resource]
		var err error
		if commit {
			octx, op := s.tel.Op(ctx, tracing.OpCommitPrepared, r)
			err = r.CommitPrepared(octx, b.XID)
			op.End(err)
		} else {
			octx, op := s.tel.Op(ctx, tracing.OpRollbackPrepared, r)
			err = r.RollbackPrepared(octx, b.XID)
			op.End(err)
		}
		if errors.Is(err, resource.ErrUnknownBranch) {
			// Gone, or held by a live session: re-read rather than
			// assume it is finished.
			err = stillPrepared(ctx, r, b.XID)
		}
		b.Done, b.Err = err == nil, err
	})
}

func stillPrepared(ctx context.Context, r resource.Resource, xid resource.XID) error {
	list, err := r.Recover(ctx)
	if err != nil {
		return err
	}
	for _, p := range list {
		if p.XID == xid {
			return fmt.Errorf("%w: still prepared (busy in another session)", resource.ErrBranchBusy)
		}
	}
	return nil
}

// collect deletes marker rows that nothing needs any more: every branch
// is finished and every participant was scanned. Abort rows stay for the
// retention period.
func (s *Scanner) collect(ctx context.Context, t *TxReport, unreachable map[string]error, dry bool) {
	if len(t.Markers) == 0 {
		return
	}
	for _, p := range t.Participants {
		if _, ok := s.res[p]; !ok || unreachable[p] != nil {
			if t.Action == "" {
				t.Action, t.Reason = ActionWait, fmt.Sprintf("marker rows kept: participant %q not scanned", p)
			}
			return
		}
	}
	if row, ok := t.Markers[t.Primary]; ok && row.State == resource.StateAbort && !seeded.EarlyAbortCleanup.Load() {
		if s.opts.clock.Now().Sub(row.CreatedAt) < s.opts.retention || t.Age < s.opts.retention {
			if t.Action == "" {
				t.Action, t.Reason = ActionWait, fmt.Sprintf("abort row kept for the retention period (%v)", s.opts.retention)
			}
			return
		}
	}
	if dry {
		if t.Action == "" {
			t.Action, t.Reason = ActionCollect, "no prepared branch left: would delete the marker rows"
		}
		return
	}
	// Non-primary rows first, the primary's last.
	holders := slices.Sorted(maps.Keys(t.Markers))
	sort.SliceStable(holders, func(i, j int) bool { return holders[j] == t.Primary && holders[i] != t.Primary })
	for _, n := range holders {
		octx, op := s.tel.Op(ctx, tracing.OpDeleteMarkers, s.res[n])
		err := s.res[n].DeleteMarkers(octx, t.GTID)
		op.End(err)
		if err != nil {
			t.Err = fmt.Errorf("deleting marker at %q: %w", n, err)
			return
		}
	}
	if t.Action == "" {
		t.Action, t.Reason = ActionCollect, "no prepared branch left"
	}
}

func (s *Scanner) log(t *TxReport, dry bool) {
	if t.Action == ActionWait {
		return
	}
	lvl := slog.LevelInfo
	if !t.Resolved() {
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
		"dry_run", dry, "err", t.Err, "branch_errors", strings.Join(errs, "; "))
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
