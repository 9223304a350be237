// Package txmanager is threepc's coordinator: it runs one transaction
// atomically across several databases with three-phase commit (or
// two-phase commit, for comparison), keeping its decision in the
// participant databases themselves.
//
// A Manager is created once with its resources (see drivers/postgres and
// drivers/mysql). Each transaction enlists a branch per resource lazily,
// on the first statement run through Tx.DB(name), which satisfies sqlc's
// DBTX interface:
//
//	err := m.Run(ctx, func(ctx context.Context, tx *txmanager.Tx) error {
//		if _, err := tx.DB("orders").ExecContext(ctx, "INSERT ..."); err != nil {
//			return err
//		}
//		_, err := tx.DB("billing").ExecContext(ctx, "UPDATE ...")
//		return err
//	})
//
// Commit's outcome is told by the error (see ErrAborted, ErrInDoubt,
// ErrCommitPending): nil means every branch committed. The protocol is
// described in docs/DESIGN.md. Transactions whose coordinator died are
// finished by package recovery, which every application should run at
// start-up and in the background.
package txmanager

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/threepc/threepc/internal/telemetry"
	"github.com/threepc/threepc/resource"
)

// Manager coordinates distributed transactions over a fixed set of
// resources. It is safe for concurrent use.
type Manager struct {
	res     map[string]*telemetry.Resource // instrumented: every database call is a span
	opts    options
	tel     *telemetry.Coordinator
	cleaner *cleaner // nil unless WithAsyncCleanup
	// batchers group the marker inserts per resource (WithBatching); a
	// resource without one inserts one row at a time.
	batchers map[string]*markerBatcher
}

// New returns a manager over resources, whose names must be unique. It
// does not touch the databases; call Check to verify them at start-up.
func New(resources []resource.Resource, opts ...Option) (*Manager, error) {
	m := &Manager{res: make(map[string]*telemetry.Resource, len(resources)), opts: defaultOptions()}
	for _, o := range opts {
		if err := o.apply(&m.opts); err != nil {
			return nil, err
		}
	}
	m.tel = newTelemetry(m.opts)
	for _, r := range resources {
		if err := resource.ValidateName(r.Name()); err != nil {
			return nil, err
		}
		if _, dup := m.res[r.Name()]; dup {
			return nil, fmt.Errorf("threepc: resource %q registered twice", r.Name())
		}
		m.res[r.Name()] = m.tel.Wrap(r)
	}
	if m.opts.batching {
		m.batchers = newMarkerBatchers(m)
	}
	if m.opts.asyncCleanup {
		m.cleaner = newCleaner(m)
		m.cleaner.pause = m.opts.pauseCleaner
	}
	return m, nil
}

// Close deletes the marker rows that asynchronous clean-up
// (WithAsyncCleanup) still holds, waiting at most until ctx ends; rows left
// then are collected by recovery. It does not close the resources. Without
// WithAsyncCleanup it does nothing.
func (m *Manager) Close(ctx context.Context) error {
	if m.cleaner == nil {
		return nil
	}
	return m.cleaner.close(ctx)
}

// Resources returns the manager's resource names, sorted.
func (m *Manager) Resources() []string {
	names := make([]string, 0, len(m.res))
	for n := range m.res {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Protocol returns the manager's protocol.
func (m *Manager) Protocol() Protocol { return m.opts.protocol }

// DecisionWindow is the longest time after Begin at which this manager
// may still record a commit decision or, after a logging-last-resource
// commit whose answer was lost, fence itself: the transaction timeout,
// then the decide timeout for the decision and one more for the fence. A
// recovery scanner's in-flight horizon should be longer, or it aborts
// transactions that were about to commit (safe, but wasteful); its
// retention of decision rows must be far longer (it is: hours).
func (m *Manager) DecisionWindow() time.Duration { return m.opts.timeout + 2*m.opts.decideTimeout }

// Check runs every resource's start-up check and joins their errors.
func (m *Manager) Check(ctx context.Context) error {
	var errs []error
	for _, name := range m.Resources() {
		if err := m.res[name].Check(ctx); err != nil {
			errs = append(errs, fmt.Errorf("resource %q: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// Begin starts a transaction. No database is touched until a statement
// runs through Tx.DB. ctx is used only for Begin itself; the transaction
// timeout starts now.
func (m *Manager) Begin(ctx context.Context) (*Tx, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	now := m.opts.clock.Now()
	tx := &Tx{
		m:        m,
		gtid:     ulid.Make().String(),
		start:    now,
		deadline: now.Add(m.opts.timeout),
		branches: make(map[string]*branch),
	}
	tx.tel = m.tel.Start(ctx, tx.gtid)
	return tx, nil
}

// Run runs fn in a transaction and commits it if fn returns nil. If fn
// returns an error or panics, the transaction is rolled back and the
// error returned (the panic re-raised). The ctx given to fn carries the
// transaction timeout.
//
// Every error Run returns matches one of ErrAborted, ErrInDoubt or
// ErrCommitPending (see Tx.Commit). An error of fn comes back wrapped in
// an *AbortError of phase "work", so errors.Is and errors.As still find
// it. When fn's error is (or wraps) an error a branch handle's statement
// returned, the AbortError's Resource names that branch (the last one to
// fail with it); an error of a branch that could not begin names it with
// phase "begin". Errors met only while iterating rows (Rows.Err) are not
// tracked.
func (m *Manager) Run(ctx context.Context, fn func(ctx context.Context, tx *Tx) error) (err error) {
	tx, err := m.Begin(ctx)
	if err != nil {
		return err
	}
	fnCtx, cancel := context.WithDeadlineCause(tx.tel.Context(ctx), tx.deadline, ErrTimeout)
	defer cancel()
	panicked := true
	defer func() {
		if panicked {
			// Roll back before re-panicking, so that no prepared or
			// active branch outlives the panic.
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	ferr := fn(fnCtx, tx)
	panicked = false
	if ferr != nil {
		if rerr := tx.Rollback(context.WithoutCancel(ctx)); rerr != nil && !errors.Is(rerr, ErrTxDone) {
			// Nothing was prepared yet, so the outcome is still an abort:
			// a branch whose rollback failed dies with its connection.
			m.opts.logger.Warn("threepc: rollback after the function's error incomplete", "gtid", tx.gtid, "err", rerr)
		}
		if errors.Is(ferr, ErrAborted) || errors.Is(ferr, ErrInDoubt) || errors.Is(ferr, ErrCommitPending) {
			return ferr
		}
		return tx.workAbort(ferr)
	}
	return tx.Commit(ctx)
}
