package postgres

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/threepc/threepc/internal/sqlerr"
	"github.com/threepc/threepc/resource"
)

// Branch states.
const (
	stateActive   int32 = iota // in the transaction, taking statements
	statePrepared              // PREPARE TRANSACTION succeeded
	// statePrepareLost: the connection broke while PREPARE TRANSACTION was in
	// flight, so the branch may or may not be prepared.
	statePrepareLost
	// stateOnePhaseLost: the connection broke while a one-phase COMMIT was
	// in flight; nobody can roll the branch back any more.
	stateOnePhaseLost
	stateFinished // committed or rolled back
)

// errConnGone: the pinned session ended before the driver sent anything,
// so the server has rolled its transaction back. It wraps
// driver.ErrBadConn so that database/sql drops the connection.
var errConnGone = fmt.Errorf("threepc/postgres: pinned connection is closed: %w", driver.ErrBadConn)

// Branch is one PostgreSQL transaction of a global transaction, on a
// pinned connection. It implements resource.Branch. Its query methods run
// inside the transaction until Prepare, CommitOnePhase or Rollback; after
// that they fail rather than run outside it. A *sql.Stmt from
// PrepareContext is bound to the pinned connection and is not guarded that
// way: do not use it after the branch is prepared.
type Branch struct {
	r    *Resource
	xid  resource.XID
	lit  string // quoted gid
	conn *sql.Conn
	pg   *pgconn.PgConn // for CancelRequest only; its other fields belong to conn
	pid  uint32         // backend process id of the pinned session

	state    atomic.Int32
	closed   atomic.Bool
	inflight atomic.Int32 // query methods running now
	canceled atomic.Bool  // a cancel request was sent: the session must not be reused

	mu sync.Mutex // serialises Prepare, Commit, Rollback and Close
}

var _ resource.Branch = (*Branch)(nil)

// Begin pins a pool connection and starts a transaction on it.
func (r *Resource) Begin(ctx context.Context, xid resource.XID) (resource.Branch, error) {
	if err := r.checkXID(xid); err != nil {
		return nil, err
	}
	lit, err := quoteLiteral(xid.PostgresGID())
	if err != nil {
		return nil, err
	}
	conn, err := r.db.Conn(ctx)
	if err != nil {
		return nil, mapError(opOther, "begin "+xid.String()+": "+r.where(), err)
	}
	b := &Branch{r: r, xid: xid, lit: lit, conn: conn}
	err = b.raw(func(c *pgx.Conn) error {
		if c.PgConn().TxStatus() != 'I' {
			return fmt.Errorf("threepc/postgres: pool connection is inside a transaction: %w", driver.ErrBadConn)
		}
		b.pg = c.PgConn()
		b.pid = c.PgConn().PID()
		_, err := c.Exec(ctx, "BEGIN")
		return err
	})
	if err != nil {
		discard(conn)
		return nil, mapError(opOther, "begin "+xid.String(), err)
	}
	return b, nil
}

// discard closes conn's session instead of handing it back to the pool:
// database/sql closes a connection whose Raw callback reports
// driver.ErrBadConn.
func discard(conn *sql.Conn) {
	_ = conn.Raw(func(any) error { return driver.ErrBadConn })
	_ = conn.Close()
}

// raw runs f on the pinned pgx connection, so that the driver can read
// command tags and the session's transaction status, which database/sql
// hides.
func (b *Branch) raw(f func(c *pgx.Conn) error) error {
	err := b.conn.Raw(func(dc any) error {
		sc, ok := dc.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("threepc/postgres: want a pgx stdlib connection, got %T", dc)
		}
		if sc.Conn().IsClosed() {
			return errConnGone
		}
		return f(sc.Conn())
	})
	if errors.Is(err, sql.ErrConnDone) {
		return errConnGone
	}
	return err
}

// XID is the branch's id.
func (b *Branch) XID() resource.XID { return b.xid }

func (b *Branch) active() bool { return b.state.Load() == stateActive && !b.closed.Load() }

// ExecContext runs a statement inside the branch.
func (b *Branch) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if !b.active() {
		return nil, errBranchNotActive
	}
	b.inflight.Add(1)
	defer b.inflight.Add(-1)
	return b.conn.ExecContext(ctx, query, args...)
}

// PrepareContext prepares a statement on the pinned connection.
func (b *Branch) PrepareContext(ctx context.Context, query string) (*sql.Stmt, error) {
	if !b.active() {
		return nil, errBranchNotActive
	}
	b.inflight.Add(1)
	defer b.inflight.Add(-1)
	return b.conn.PrepareContext(ctx, query)
}

// QueryContext runs a query inside the branch.
func (b *Branch) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if !b.active() {
		return nil, errBranchNotActive
	}
	b.inflight.Add(1)
	defer b.inflight.Add(-1)
	return b.conn.QueryContext(ctx, query, args...)
}

// QueryRowContext runs a query expected to return one row inside the
// branch.
func (b *Branch) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	if !b.active() {
		// Row.Scan and Row.Err return errBranchNotActive, as ExecContext
		// does; the query is not run.
		return sqlerr.Row(errBranchNotActive)
	}
	b.inflight.Add(1)
	defer b.inflight.Add(-1)
	return b.conn.QueryRowContext(ctx, query, args...)
}

// Prepare prepares the branch with PREPARE TRANSACTION. A branch whose
// transaction has failed, or that PostgreSQL refuses to prepare, is rolled
// back and the error wraps resource.ErrPrepareRefused (and, where one
// applies, a more precise sentinel such as ErrBranchExists or
// ErrTooManyPrepared). If the connection breaks while PREPARE is in flight
// the error wraps resource.ErrUnreachable and the branch may or may not be
// prepared: Rollback resolves that.
func (b *Branch) Prepare(ctx context.Context) (resource.Vote, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed.Load() {
		return 0, fmt.Errorf("threepc/postgres: prepare %s: branch is closed", b.xid)
	}
	if s := b.state.Load(); s != stateActive {
		return 0, fmt.Errorf("threepc/postgres: prepare %s: %w: %w", b.xid, resource.ErrPrepareRefused, errBranchNotActive)
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("threepc/postgres: prepare %s: %w", b.xid, err)
	}
	var (
		before, after byte
		tags          []pgconn.CommandTag
		execErr       error
		connClosed    bool
	)
	err := b.raw(func(c *pgx.Conn) error {
		pc := c.PgConn()
		before = pc.TxStatus()
		if before != 'T' {
			return nil
		}
		// The evidence row goes in the same round trip as PREPARE. A
		// second branch with this id (a bug, or a gid reused by hand)
		// would wait on the first one's uncommitted evidence row for as
		// long as that stays prepared: lock_timeout turns the wait into a
		// refusal. SET LOCAL ends with the transaction.
		tags, execErr = pipeline(ctx, pc,
			stmt{"SET LOCAL lock_timeout = '" + evidenceLockTimeout + "'", nil},
			stmt{insertEvidenceSQL, []string{b.xid.GTID, b.xid.Branch, b.xid.Primary, b.xid.Space}},
			stmt{"PREPARE TRANSACTION " + b.lit, nil})
		after, connClosed = pc.TxStatus(), pc.IsClosed()
		if execErr == nil || connClosed || after == 'I' {
			return nil
		}
		// The INSERT failed and the server skipped PREPARE: the
		// transaction is failed, end it here rather than leave the
		// session inside it.
		_, rbErr := c.Exec(ctx, "ROLLBACK")
		after, connClosed = pc.TxStatus(), pc.IsClosed()
		if rbErr != nil && !connClosed {
			return rbErr
		}
		return nil
	})
	what := "prepare " + b.xid.String()
	if errors.Is(err, errConnGone) {
		// The session ended before PREPARE was sent: the server rolled
		// the transaction back.
		b.state.Store(stateFinished)
		return 0, fmt.Errorf("threepc/postgres: %s: %w: the connection was lost before PREPARE: %w: %w", what, resource.ErrPrepareRefused, resource.ErrUnreachable, err)
	}
	if err != nil {
		return 0, mapError(opPrepare, what, err)
	}
	switch before {
	case 'E':
		rbErr := b.rollbackLocal(ctx)
		return 0, errors.Join(
			fmt.Errorf("threepc/postgres: %s: %w: the transaction had failed (a statement returned an error); it was rolled back", what, resource.ErrPrepareRefused),
			rbErr)
	case 'I':
		// A COMMIT or ROLLBACK ran through the branch's query methods.
		b.state.Store(stateFinished)
		return 0, fmt.Errorf("threepc/postgres: %s: %w: the transaction was already ended by a statement on the branch", what, resource.ErrPrepareRefused)
	}
	var tag pgconn.CommandTag
	if len(tags) == 3 {
		tag = tags[2]
	}
	switch {
	case execErr == nil && tag.String() == "PREPARE TRANSACTION":
		b.state.Store(statePrepared)
		return resource.VotePrepared, nil
	case execErr == nil:
		// PostgreSQL answers PREPARE in a failed transaction with the tag
		// ROLLBACK and no error.
		b.state.Store(stateFinished)
		return 0, fmt.Errorf("threepc/postgres: %s: %w: PREPARE TRANSACTION answered %q: the transaction was rolled back", what, resource.ErrPrepareRefused, tag.String())
	case connClosed || !refusal(execErr):
		b.state.Store(statePrepareLost)
		return 0, mapError(opPrepare, what+" (outcome unknown)", execErr)
	case len(tags) < 2:
		// The server refused the evidence row (or the SET before it) and
		// skipped PREPARE; the transaction was rolled back above.
		b.state.Store(stateFinished)
		return 0, fmt.Errorf("%w: %w", resource.ErrPrepareRefused, evidenceError(what+": inserting the evidence row (rolled back)", execErr))
	default:
		// The server refused: a failed PREPARE aborts the transaction.
		b.state.Store(stateFinished)
		return 0, fmt.Errorf("%w: %w", resource.ErrPrepareRefused, mapError(opPrepare, what+" (rolled back)", execErr))
	}
}

// evidenceLockTimeout bounds the wait of an evidence row insert on another
// transaction's row with the same key (see Prepare).
const evidenceLockTimeout = "5s"

func evidenceError(what string, err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == codeLockNotAvailable {
		return fmt.Errorf("threepc/postgres: %s: another transaction holds this branch id's evidence row (a branch with the same id, perhaps prepared) or locks the marker table: %w", what, err)
	}
	err = mapError(opEvidence, what, err)
	if errors.Is(err, resource.ErrMarkerTableMissing) {
		return fmt.Errorf("%w (run the migrations: `threepc migrate` or migrations.Up)", err)
	}
	return err
}

// rollbackLocal runs ROLLBACK on the pinned session. A session that is
// gone has been rolled back by the server, so that is success too. Callers
// hold mu.
func (b *Branch) rollbackLocal(ctx context.Context) error {
	err := b.raw(func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, "ROLLBACK")
		if err != nil && c.IsClosed() {
			return errConnGone
		}
		return err
	})
	if err == nil || errors.Is(err, errConnGone) {
		b.state.Store(stateFinished)
		return nil
	}
	return mapError(opOther, "rollback "+b.xid.String(), err)
}

// Commit commits the prepared branch with COMMIT PREPARED, on the pinned
// connection if it is still open, else on a pool connection. Its OK is
// authoritative. A branch no longer prepared (42704) is committed if its
// evidence row is there (someone else committed it); else the error wraps
// resource.ErrHeuristic.
func (b *Branch) Commit(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	state := b.state.Load()
	switch state {
	case statePrepared, statePrepareLost:
	default:
		return fmt.Errorf("threepc/postgres: commit %s: the branch is not prepared", b.xid)
	}
	err := b.finishPrepared(ctx, "COMMIT PREPARED")
	if errors.Is(err, resource.ErrUnknownBranch) && state == statePrepareLost {
		// The session that ran PREPARE may still be running it: only once
		// it has exited is "no such gid" final.
		if werr := b.waitBackendGone(ctx); werr != nil {
			return fmt.Errorf("threepc/postgres: commit %s: waiting for the session that ran PREPARE to end: %w", b.xid, werr)
		}
		err = b.finishPrepared(ctx, "COMMIT PREPARED")
	}
	if errors.Is(err, resource.ErrUnknownBranch) {
		err = b.r.commitGone(ctx, b.xid, err)
	}
	if err != nil {
		return err
	}
	b.state.Store(stateFinished)
	return nil
}

// finishPrepared runs verb (COMMIT PREPARED or ROLLBACK PREPARED) on the
// pinned session, or on the pool if the pinned session is gone before the
// statement is sent.
func (b *Branch) finishPrepared(ctx context.Context, verb string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("threepc/postgres: %s %s: %w", verb, b.lit, err)
	}
	var err error
	if !b.closed.Load() {
		err = b.raw(func(c *pgx.Conn) error {
			_, err := c.Exec(ctx, verb+" "+b.lit)
			return err
		})
		if !errors.Is(err, errConnGone) {
			return mapError(opFinish, verb+" "+b.lit, err)
		}
	}
	_, err = b.r.db.ExecContext(ctx, verb+" "+b.lit)
	return mapError(opFinish, verb+" "+b.lit, err)
}

// CommitOnePhase commits a branch that was never prepared with a plain
// COMMIT. PostgreSQL answers COMMIT of a failed transaction with the tag
// ROLLBACK and no error; that, and a COMMIT that fails on the server (a
// deferred constraint, a serialization failure), return an error wrapping
// resource.ErrPrepareRefused: the transaction was rolled back. A broken
// connection while COMMIT is in flight returns ErrUnreachable: the outcome
// is unknown.
func (b *Branch) CommitOnePhase(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	what := "commit " + b.xid.String()
	if b.closed.Load() || b.state.Load() != stateActive {
		return fmt.Errorf("threepc/postgres: %s: %w", what, errBranchNotActive)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("threepc/postgres: %s: %w", what, err)
	}
	var (
		tag     pgconn.CommandTag
		execErr error
		status  byte
		closed  bool
	)
	err := b.raw(func(c *pgx.Conn) error {
		tag, execErr = c.Exec(ctx, "COMMIT")
		status, closed = c.PgConn().TxStatus(), c.IsClosed()
		return nil
	})
	switch {
	case errors.Is(err, errConnGone):
		b.state.Store(stateFinished)
		return fmt.Errorf("threepc/postgres: %s: %w: the connection was lost before COMMIT, the server rolled the transaction back: %w: %w", what, resource.ErrPrepareRefused, resource.ErrUnreachable, err)
	case err != nil:
		return mapError(opOther, what, err)
	case execErr == nil && tag.String() == "COMMIT":
		b.state.Store(stateFinished)
		return nil
	case execErr == nil:
		b.state.Store(stateFinished)
		return fmt.Errorf("threepc/postgres: %s: %w: COMMIT answered %q: the transaction had failed and was rolled back", what, resource.ErrPrepareRefused, tag.String())
	case closed || !refusal(execErr):
		b.state.Store(stateOnePhaseLost)
		return mapError(opOther, what+" (outcome unknown)", execErr)
	default:
		if status != 'I' {
			_ = b.rollbackLocal(ctx)
		}
		b.state.Store(stateFinished)
		return fmt.Errorf("%w: %w", resource.ErrPrepareRefused, mapError(opOther, what+" (rolled back)", execErr))
	}
}

// Rollback rolls the branch back whatever its state: ROLLBACK while it is
// active or failed, ROLLBACK PREPARED once prepared. Called from another
// goroutine while a statement of the branch is running, it first sends the
// server a cancel request so the statement (perhaps waiting on a lock)
// ends. Rolling back a finished branch returns nil; a prepared branch that
// someone else finished returns ErrUnknownBranch, or ErrHeuristic when its
// evidence shows that it committed.
func (b *Branch) Rollback(ctx context.Context) error {
	if b.state.Load() == stateActive && b.inflight.Load() > 0 && b.pg != nil {
		// The session will be discarded by Close: a late cancel must not
		// hit the next user of a pooled connection.
		b.canceled.Store(true)
		_ = b.pg.CancelRequest(ctx)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state.Load() {
	case stateFinished:
		return nil
	case stateOnePhaseLost:
		return fmt.Errorf("threepc/postgres: rollback %s: %w: the connection broke during a one-phase COMMIT, whose outcome is unknown", b.xid, resource.ErrUnreachable)
	case stateActive:
		if b.closed.Load() {
			b.state.Store(stateFinished)
			return nil
		}
		return b.rollbackLocal(ctx)
	case statePrepared:
		err := b.finishPrepared(ctx, "ROLLBACK PREPARED")
		if errors.Is(err, resource.ErrUnknownBranch) {
			err = b.r.rollbackGone(ctx, b.xid, err)
		}
		if err == nil {
			b.state.Store(stateFinished)
		}
		return err
	}
	// statePrepareLost: PREPARE may have completed or not.
	err := b.finishPrepared(ctx, "ROLLBACK PREPARED")
	if !errors.Is(err, resource.ErrUnknownBranch) {
		if err == nil {
			b.state.Store(stateFinished)
		}
		return err
	}
	// Not prepared, unless the old session is still running its PREPARE.
	// Once that session has exited the answer is final.
	if err := b.waitBackendGone(ctx); err != nil {
		return fmt.Errorf("threepc/postgres: rollback %s: waiting for the session that ran PREPARE to end: %w", b.xid, err)
	}
	err = b.finishPrepared(ctx, "ROLLBACK PREPARED")
	if errors.Is(err, resource.ErrUnknownBranch) {
		// Never prepared, or prepared and finished by someone else: only
		// the evidence tells a commit from a rollback.
		if err = b.r.rollbackGone(ctx, b.xid, err); errors.Is(err, resource.ErrUnknownBranch) {
			err = nil
		}
	}
	if err == nil {
		b.state.Store(stateFinished)
	}
	return err
}

// waitBackendGone polls pg_stat_activity until the pinned session's
// backend has exited or ctx ends.
func (b *Branch) waitBackendGone(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		var alive bool
		err := b.r.db.QueryRowContext(ctx, "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)", int64(b.pid)).Scan(&alive)
		if err != nil {
			return mapError(opOther, "pg_stat_activity", err)
		}
		if !alive {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Close releases the pinned connection. A session still inside a
// transaction (or in an unknown state, or sent a cancel request) is
// closed instead of returned to the pool; the server then rolls back a
// transaction that was not prepared. Close is idempotent.
func (b *Branch) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed.Swap(true) {
		return nil
	}
	keep := false
	_ = b.conn.Raw(func(dc any) error {
		sc, ok := dc.(*stdlib.Conn)
		keep = ok && !b.canceled.Load() && !sc.Conn().IsClosed() && sc.Conn().PgConn().TxStatus() == 'I'
		if !keep {
			return driver.ErrBadConn
		}
		return nil
	})
	if s := b.state.Load(); s == stateActive {
		b.state.Store(stateFinished)
	}
	if err := b.conn.Close(); err != nil && !errors.Is(err, sql.ErrConnDone) {
		return fmt.Errorf("threepc/postgres: close %s: %w", b.xid, err)
	}
	return nil
}
