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

	"github.com/threepc/threepc/internal/fanout"
	"github.com/threepc/threepc/internal/telemetry"
	"github.com/threepc/threepc/resource"
)

// Scanner resolves in-doubt transactions over a set of resources.
type Scanner struct {
	res  map[string]*telemetry.Resource // instrumented: every database call is a span
	opts options
	tel  *telemetry.Scanner
}

// New returns a scanner over resources (the same set, by name, as the
// coordinators use; a resource missing here makes its transactions
// unresolvable when it is their primary).
func New(resources []resource.Resource, opts ...Option) (*Scanner, error) {
	s := &Scanner{res: map[string]*telemetry.Resource{}, opts: options{
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
	s.tel = telemetry.NewScanner(s.opts.tp, s.opts.mp)
	for _, r := range resources {
		if err := resource.ValidateName(r.Name()); err != nil {
			return nil, err
		}
		if _, dup := s.res[r.Name()]; dup {
			return nil, fmt.Errorf("threepc/recovery: resource %q registered twice", r.Name())
		}
		s.res[r.Name()] = s.tel.Wrap(r)
	}
	return s, nil
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
		fs[i].markers, fs[i].err = s.res[n].ListMarkers(lctx)
	})
	lcancel()
	lctx, lcancel = context.WithTimeout(ctx, s.opts.deadline/4)
	s.each(len(names), func(i int) {
		n := names[i]
		if fs[i].err == nil {
			fs[i].prepared, fs[i].err = s.res[n].Recover(lctx)
		}
	})
	lcancel()
	g := gather(names, fs, s.opts.space, s.opts.clock.Now())
	rep.Unreachable, rep.Foreign = g.Unreachable, g.Foreign
	for _, n := range names {
		if err := rep.Unreachable[n]; err != nil && ctx.Err() == nil {
			// (A scan cut short by its caller's shutdown is no warning.)
			s.opts.logger.Warn("threepc/recovery: resource not scanned", "resource", n, "err", err)
		}
	}
	cfg := &planConfig{
		horizon: s.opts.horizon, retention: s.opts.retention, tombstones: s.opts.tombstones,
		deadline: s.opts.deadline, fenceBy: fenceBy, space: s.opts.space, owner: s.opts.instanceID, dry: dry,
		resources: map[string]bool{}, unreachable: rep.Unreachable,
	}
	for _, n := range names {
		cfg.resources[n] = true
	}
	for _, f := range g.Txs {
		rctx, span := s.tel.StartResolve(ctx, f.GTID)
		t := s.resolve(rctx, cfg, f)
		span.End(resolution(&t, dry))
		rep.Transactions = append(rep.Transactions, t)
	}
	if !dry {
		s.collectBatches(ctx, rep.Transactions)
	}
	for i := range rep.Transactions {
		s.log(&rep.Transactions[i], dry)
	}
	rep.OtherPrepared = s.otherPrepared(ctx, names, rep.Unreachable)
	rep.Duration = s.opts.clock.Now().Sub(rep.Started)
	return rep, nil
}

// otherPrepared lists, after the scan's own work and with what is left of
// its deadline, the other software's prepared transactions on the server
// of every reachable resource that can list them
// (resource.ServerPreparedLister). Nothing acts on them; a resource whose
// listing fails is left out.
func (s *Scanner) otherPrepared(ctx context.Context, names []string, unreachable map[string]error) map[string]OtherPrepared {
	out := make([]*OtherPrepared, len(names))
	now := s.opts.clock.Now()
	s.each(len(names), func(i int) {
		l, ok := s.res[names[i]].Unwrap().(resource.ServerPreparedLister)
		if !ok || unreachable[names[i]] != nil {
			return
		}
		ps, err := l.ListServerPrepared(ctx)
		if err != nil {
			s.opts.logger.Info("threepc/recovery: the server's prepared transactions not listed", "resource", names[i], "err", err)
			return
		}
		o := &OtherPrepared{}
		for _, p := range ps {
			if p.Ours {
				continue
			}
			o.Count++
			if !p.PreparedAt.IsZero() {
				o.Oldest = max(o.Oldest, now.Sub(p.PreparedAt))
			}
		}
		out[i] = o
	})
	m := map[string]OtherPrepared{}
	for i, o := range out {
		if o != nil {
			m[names[i]] = *o
		}
	}
	return m
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
