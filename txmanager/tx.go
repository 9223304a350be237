package txmanager

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/threepc/threepc/internal/sqlerr"
	"github.com/threepc/threepc/internal/telemetry"
	"github.com/threepc/threepc/resource"
)

// Tx is one distributed transaction. Its branch handles (DB) may be used
// from several goroutines: branches on different resources begin and run
// concurrently, and the primary is the resource whose first statement
// started first. Commit and Rollback end it, once (they wait for branches
// still being begun).
type Tx struct {
	m        *Manager
	gtid     string
	start    time.Time // monotonic
	deadline time.Time
	tel      telemetry.Txn // ended by whoever wins finish

	mu       sync.Mutex
	primary  string // the first resource enlisted
	branches map[string]*branch
	order    []*branch // enlistment order; order[0] is the primary
	failed   error     // set when a branch could not be enlisted: Commit must abort
	done     bool
	cancels  []context.CancelFunc // statement deadlines, released at the end
	// stmtFailed is the last failed statement of each branch handle, most
	// recent last: Run names the branch whose error the function returned.
	stmtFailed []stmtFailure
}

// stmtFailure is a statement error returned by a branch handle.
type stmtFailure struct {
	name string
	err  error
}

// branch is the coordinator's record of one enlisted branch.
type branch struct {
	res      *telemetry.Resource // the coordinator's view of the resource: calls are spans
	branch   telemetry.Branch    // the driver's branch, its protocol calls spans
	xid      resource.XID
	prepared bool // voted VotePrepared
	readOnly bool // voted VoteReadOnly: finished, leaves the protocol
	closed   bool
	// begun is done once BeginBranch returned (branch set, or beginErr);
	// enlist's other callers wait on it.
	begun    sync.WaitGroup
	beginErr error
}

// GTID returns the transaction's global id, as found in branch ids,
// marker rows, logs and traces.
func (tx *Tx) GTID() string { return tx.gtid }

// Deadline returns the transaction timeout's deadline.
func (tx *Tx) Deadline() time.Time { return tx.deadline }

// DB returns the handle of the branch on the named resource. The branch
// is started on the handle's first statement. The handle satisfies sqlc's
// DBTX interface (resource.DBTX), so generated query code runs inside the
// transaction unchanged: queries.New(tx.DB("orders")).
//
// An unknown name gives a handle whose every statement fails with
// ErrUnknownResource.
func (tx *Tx) DB(name string) resource.DBTX { return handle{tx: tx, name: name} }

// Participants returns the names of the enlisted resources, in
// enlistment order (the first is the primary).
func (tx *Tx) Participants() []string {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	names := make([]string, len(tx.order))
	for i, b := range tx.order {
		names[i] = b.xid.Branch
	}
	return names
}

// enlist returns the branch on name, beginning it on first use. Branches
// on different resources begin concurrently (handles used from several
// goroutines); a second user of a branch being begun waits for it. The
// primary is the resource whose enlistment started first.
func (tx *Tx) enlist(ctx context.Context, name string) (resource.Branch, error) {
	tx.mu.Lock()
	if tx.done {
		tx.mu.Unlock()
		return nil, ErrTxDone
	}
	if b, ok := tx.branches[name]; ok {
		tx.mu.Unlock()
		b.begun.Wait()
		if b.beginErr != nil {
			return nil, b.beginErr
		}
		return b.branch.Unwrap(), nil
	}
	r, ok := tx.m.res[name]
	if !ok {
		tx.mu.Unlock()
		return nil, fmt.Errorf("%w %q (have %v)", ErrUnknownResource, name, tx.m.Resources())
	}
	if tx.m.opts.clock.Now().After(tx.deadline) {
		defer tx.mu.Unlock()
		return nil, tx.fail(name, resource.PhaseBegin, ErrTimeout)
	}
	if tx.primary == "" {
		tx.primary = name
	}
	xid := resource.XID{GTID: tx.gtid, Primary: tx.primary, Branch: name, Space: tx.m.opts.space}
	// Reserved under the lock, begun outside it: other resources' branches
	// need not wait for this one's round trip.
	b := &branch{res: r, xid: xid}
	b.begun.Add(1)
	tx.branches[name] = b
	tx.order = append(tx.order, b)
	tx.mu.Unlock()

	tb, err := r.BeginBranch(tx.tel.Context(ctx), xid)
	tx.mu.Lock()
	defer tx.mu.Unlock()
	defer b.begun.Done()
	if err != nil {
		// Not a branch of the transaction: nothing to prepare or roll
		// back. The transaction is doomed (tx.failed), so the primary
		// named in the others' ids never decides.
		b.beginErr = tx.fail(name, resource.PhaseBegin, tx.stmtError(err))
		tx.order = slices.DeleteFunc(tx.order, func(o *branch) bool { return o == b })
		return nil, b.beginErr
	}
	// The driver may complete the id (MySQL records the session in it).
	b.branch, b.xid = tb, tb.XID()
	return tb.Unwrap(), nil
}

// fail records a failure that dooms the transaction (called with tx.mu
// held) and returns the error for the statement that saw it.
func (tx *Tx) fail(name string, phase resource.Phase, err error) error {
	err = &resource.BranchError{Resource: name, Phase: phase, Err: err}
	if tx.failed == nil {
		tx.failed = err
	}
	return err
}

// stmtContext bounds a statement by the transaction timeout. The cancel
// is kept until the transaction ends because rows may outlive the call.
func (tx *Tx) stmtContext(ctx context.Context) context.Context {
	if d, ok := ctx.Deadline(); ok && !d.After(tx.deadline) {
		return ctx
	}
	ctx, cancel := context.WithDeadlineCause(ctx, tx.wallDeadline(), ErrTimeout)
	tx.mu.Lock()
	tx.cancels = append(tx.cancels, cancel)
	tx.mu.Unlock()
	return ctx
}

// wallDeadline converts the deadline (read from the injected clock) to
// the system clock that contexts use.
func (tx *Tx) wallDeadline() time.Time {
	return time.Now().Add(tx.deadline.Sub(tx.m.opts.clock.Now()))
}

// stmtError marks statement errors caused by the transaction timeout.
func (tx *Tx) stmtError(err error) error {
	if err == nil || errors.Is(err, ErrTimeout) {
		return err
	}
	if !tx.m.opts.clock.Now().Before(tx.deadline) {
		return fmt.Errorf("%w: %w", tx.timeoutError(), err)
	}
	return err
}

// timeoutError says that the transaction timeout expired, and what that
// usually means.
func (tx *Tx) timeoutError() error {
	return fmt.Errorf("%w (%v after begin; a distributed deadlock, which neither database can detect, ends this way)",
		ErrTimeout, tx.m.opts.timeout)
}

// noteFailure records err, a statement error a handle of the branch on name
// returns, and returns it unchanged: the caller's error chain stays the
// database's own (errors.Is and errors.As see exactly what the driver
// returned); the branch is found again by identity (culprit).
func (tx *Tx) noteFailure(name string, err error) error {
	if err == nil {
		return nil
	}
	tx.mu.Lock()
	defer tx.mu.Unlock()
	tx.stmtFailed = slices.DeleteFunc(tx.stmtFailed, func(f stmtFailure) bool { return f.name == name })
	tx.stmtFailed = append(tx.stmtFailed, stmtFailure{name, err})
	return err
}

// culprit names the branch whose failed statement produced err (err, or
// an error wrapping it), the most recent first; "" if none did.
func (tx *Tx) culprit(err error) string {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	for _, f := range slices.Backward(tx.stmtFailed) {
		if errors.Is(err, f.err) {
			return f.name
		}
	}
	return ""
}

// workAbort is the AbortError for ferr, the error the function given to
// Run returned: it names the branch that caused it, when a branch's
// statement or begin did.
func (tx *Tx) workAbort(ferr error) *AbortError {
	ae := &AbortError{GTID: tx.gtid, Phase: resource.PhaseWork, Err: ferr}
	var be *resource.BranchError
	if errors.As(ferr, &be) {
		// A branch that could not begin (enlist's error).
		ae.Resource, ae.Phase = be.Resource, be.Phase
		if ferr == error(be) {
			// Unwrapped: the AbortError's message names the resource
			// and phase already.
			ae.Err = be.Err
		}
		return ae
	}
	ae.Resource = tx.culprit(ferr)
	return ae
}

// finish marks the transaction done and returns its branches, or
// ErrTxDone. Branches still being begun (by another goroutine's handle)
// are waited for; those that could not begin are left out.
func (tx *Tx) finish() ([]*branch, error) {
	tx.mu.Lock()
	if tx.done {
		tx.mu.Unlock()
		return nil, ErrTxDone
	}
	tx.done = true
	branches := slices.Clone(tx.order)
	tx.mu.Unlock()
	for _, b := range branches {
		b.begun.Wait()
	}
	return slices.DeleteFunc(branches, func(b *branch) bool { return b.beginErr != nil }), nil
}

func (tx *Tx) releaseStatements() {
	tx.mu.Lock()
	cancels := tx.cancels
	tx.cancels = nil
	tx.mu.Unlock()
	for _, c := range cancels {
		c()
	}
}

// handle is a branch handle: Tx.DB's result.
type handle struct {
	tx   *Tx
	name string
}

func (h handle) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	b, err := h.tx.enlist(ctx, h.name)
	if err != nil {
		return nil, err
	}
	res, err := b.ExecContext(h.tx.stmtContext(ctx), query, args...)
	return res, h.tx.noteFailure(h.name, h.tx.stmtError(err))
}

func (h handle) PrepareContext(ctx context.Context, query string) (*sql.Stmt, error) {
	b, err := h.tx.enlist(ctx, h.name)
	if err != nil {
		return nil, err
	}
	st, err := b.PrepareContext(h.tx.stmtContext(ctx), query)
	return st, h.tx.noteFailure(h.name, h.tx.stmtError(err))
}

func (h handle) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	b, err := h.tx.enlist(ctx, h.name)
	if err != nil {
		return nil, err
	}
	rows, err := b.QueryContext(h.tx.stmtContext(ctx), query, args...)
	return rows, h.tx.noteFailure(h.name, h.tx.stmtError(err))
}

func (h handle) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	b, err := h.tx.enlist(ctx, h.name)
	if err != nil {
		return sqlerr.Row(err)
	}
	row := b.QueryRowContext(h.tx.stmtContext(ctx), query, args...)
	// Scan returns this same error value (sql.ErrNoRows aside, which is
	// no statement failure).
	_ = h.tx.noteFailure(h.name, row.Err())
	return row
}
