package mysql

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/threepc/threepc/internal/sqlerr"
	"github.com/threepc/threepc/resource"
)

// branchState is where a branch is in the XA state machine, as far as the
// driver knows.
type branchState int

const (
	stateActive       branchState = iota // after XA START: the work phase
	stateRollbackOnly                    // the server rolled the work back (1402/1613/1614); XA ROLLBACK ends it
	statePrepared                        // after XA PREPARE
	statePrepareLost                     // XA PREPARE sent, connection broke: maybe prepared
	stateOnePhaseLost                    // XA COMMIT ONE PHASE sent, connection broke: outcome unknown
	stateCommitted
	stateRolledBack
)

func (s branchState) String() string {
	switch s {
	case stateActive:
		return "active"
	case stateRollbackOnly:
		return "rollback-only"
	case statePrepared:
		return "prepared"
	case statePrepareLost:
		return "prepare outcome unknown"
	case stateOnePhaseLost:
		return "one-phase commit outcome unknown"
	case stateCommitted:
		return "committed"
	case stateRolledBack:
		return "rolled back"
	}
	return "invalid"
}

// Branch is one XA transaction branch on a pinned connection. It
// implements resource.Branch; see the package documentation for the rules
// it follows.
type Branch struct {
	r        *Resource
	xid      resource.XID
	lit      string // the XA id as SQL
	conn     *sql.Conn
	threadID int64 // CONNECTION_ID() of the pinned session
	connKey  any   // the pinned driver connection, the key of Resource.sessions
	// detachOnPrepare: MySQL 8.0.29+ with xa_detach_on_prepare=ON, where
	// the session is free again once XA PREPARE returns.
	detachOnPrepare bool
	// before is the sum of the session's Handler_write, Handler_update and
	// Handler_delete counters before XA START; countersOK says whether
	// they could be read (read-only detection is on).
	before     int64
	countersOK bool

	running atomic.Int32 // user statements in flight

	mu     sync.Mutex
	state  branchState
	live   bool  // conn is still pinned to this branch (not released nor discarded)
	failed error // first error a user statement returned
	killed bool  // the session was killed by Rollback from another goroutine
	// readOnly: the branch voted read-only (and is committed: it wrote
	// nothing, so rolling it back is the same).
	readOnly bool
	closed   bool
}

var _ resource.Branch = (*Branch)(nil)

// handlerCounters is the status variables whose sum moves whenever the
// session writes a row through any storage engine.
const handlerCounters = "('HANDLER_WRITE', 'HANDLER_UPDATE', 'HANDLER_DELETE')"

func (r *Resource) countersExpr(v serverVersion) string {
	t := v.statusTable()
	return "(SELECT COALESCE(SUM(CAST(VARIABLE_VALUE AS UNSIGNED)), 0) FROM " + t +
		" WHERE UPPER(VARIABLE_NAME) IN " + handlerCounters + "), (SELECT COUNT(*) FROM " + t +
		" WHERE UPPER(VARIABLE_NAME) IN " + handlerCounters + ")"
}

// Begin pins a pool connection and starts an XA branch on it. xid must be
// valid and xid.Branch must be this resource's name; the branch's id
// (Branch.XID) also carries the session that began it (xid.Session is
// ignored): CONNECTION_ID(), or 0 where the server detaches the branch at
// prepare (MySQL with xa_detach_on_prepare=ON). 1440 XAER_DUPID maps to
// resource.ErrBranchExists.
func (r *Resource) Begin(ctx context.Context, xid resource.XID) (resource.Branch, error) {
	if err := r.checkXID(xid); err != nil {
		return nil, err
	}
	v, tag, err := r.serverInfo(ctx)
	if err != nil {
		return nil, err
	}
	if err := v.supported(); err != nil {
		return nil, err
	}
	what := "XA START of " + xid.String()
	conn, err := r.db.Conn(ctx)
	if err != nil {
		return nil, r.unreachable(what, err)
	}
	b := &Branch{r: r, xid: xid, conn: conn, live: true}
	_ = conn.Raw(func(dc any) error { b.connKey = dc; return nil })

	if info, ok := r.sessions.get(b.connKey); ok && !r.cfg.ReadOnlyVote {
		// Nothing to read before XA START: the session's id and detach
		// mode are known from an earlier branch on this connection.
		b.threadID, b.detachOnPrepare = info.threadID, info.detachOnPrepare
	} else {
		detach := "0"
		if v.detachCapable() {
			detach = "@@session.xa_detach_on_prepare"
		}
		counters := "0, 0"
		if r.cfg.ReadOnlyVote {
			counters = r.countersExpr(v)
		}
		var detachOn, count int64
		err = conn.QueryRowContext(ctx, "SELECT CONNECTION_ID(), "+detach+", "+counters).Scan(&b.threadID, &detachOn, &b.before, &count)
		if err != nil && mysqlErrno(err) != 0 && counters != "0, 0" {
			// The status table may be missing (performance_schema off):
			// without counters every branch votes prepared.
			err = conn.QueryRowContext(ctx, "SELECT CONNECTION_ID(), "+detach).Scan(&b.threadID, &detachOn)
			count = 0
		}
		if err != nil {
			discard(conn)
			r.sessions.forget(b.connKey)
			return nil, r.unreachable(what, err)
		}
		b.detachOnPrepare = detachOn != 0
		b.countersOK = count == 3
		r.sessions.put(b.connKey, sessionInfo{threadID: b.threadID, detachOnPrepare: b.detachOnPrepare})
	}
	// Recovery ends this session to take over a branch still attached to
	// it; a branch the server detaches at prepare has no session to end.
	b.xid.Session = uint64(b.threadID)
	if b.detachOnPrepare {
		b.xid.Session = 0
	}
	b.lit = xidLiteral(b.xid, tag)

	if _, err := conn.ExecContext(ctx, "XA START "+b.lit); err != nil {
		if mysqlErrno(err) == erXAERDupID {
			// The session is unchanged: no XA was started.
			_ = conn.Close()
			return nil, wrap(what, resource.ErrBranchExists, err)
		}
		discard(conn)
		r.sessions.forget(b.connKey)
		return nil, r.unreachable(what, err)
	}
	return b, nil
}

// XID is the branch's id, with the session that began it (XID.Session).
func (b *Branch) XID() resource.XID { return b.xid }

// workConn returns the pinned connection for a user statement.
func (b *Branch) workConn() (*sql.Conn, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.closed:
		return nil, fmt.Errorf("threepc/mysql: branch %s is closed", b.xid)
	case b.state != stateActive:
		return nil, fmt.Errorf("threepc/mysql: branch %s is %s, not active", b.xid, b.state)
	}
	return b.conn, nil
}

// note records the first error of a user statement: it makes Prepare
// refuse.
func (b *Branch) note(err error) {
	if err == nil {
		return
	}
	b.mu.Lock()
	if b.failed == nil {
		b.failed = err
	}
	b.mu.Unlock()
}

// ExecContext runs a statement inside the branch.
func (b *Branch) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	c, err := b.workConn()
	if err != nil {
		return nil, err
	}
	b.running.Add(1)
	res, err := c.ExecContext(ctx, query, args...)
	b.running.Add(-1)
	b.note(err)
	return res, err
}

// QueryContext runs a query inside the branch. Errors reported later by
// Rows.Err are not seen by the branch.
func (b *Branch) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	c, err := b.workConn()
	if err != nil {
		return nil, err
	}
	b.running.Add(1)
	rows, err := c.QueryContext(ctx, query, args...)
	b.running.Add(-1)
	b.note(err)
	return rows, err
}

// QueryRowContext runs a query that returns at most one row inside the
// branch. On a branch that is no longer active the query is not run: Row.Scan
// and Row.Err return the error ExecContext would.
func (b *Branch) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	c, err := b.workConn()
	if err != nil {
		return sqlerr.Row(err)
	}
	b.running.Add(1)
	row := c.QueryRowContext(ctx, query, args...)
	b.running.Add(-1)
	b.note(row.Err())
	return row
}

// PrepareContext prepares a statement on the branch's connection. Errors
// of its later executions are not seen by the branch.
func (b *Branch) PrepareContext(ctx context.Context, query string) (*sql.Stmt, error) {
	c, err := b.workConn()
	if err != nil {
		return nil, err
	}
	st, err := c.PrepareContext(ctx, query)
	b.note(err)
	return st, err
}

// exec runs a statement of the driver's own on the pinned connection.
func (b *Branch) exec(ctx context.Context, stmt string) error {
	_, err := b.conn.ExecContext(ctx, stmt+" "+b.lit)
	return err
}

// release hands the pinned connection back to the pool; only for a
// session without any XA state.
func (b *Branch) release() {
	if b.live {
		b.live = false
		_ = b.conn.Close()
	}
}

// drop discards the pinned connection. A prepared branch survives on the
// server; it is finished by id from then on (finishByID, which waits until
// the server has taken it over from the ended session).
func (b *Branch) drop() {
	if b.live {
		b.live = false
		discard(b.conn)
		b.r.sessions.forget(b.connKey)
	}
}

// batch runs stmts on the pinned connection: in one round trip (one
// COM_QUERY) when the pool's connections take several statements, else
// one by one. Whether they do is learnt once: without go-sql-driver's
// MultiStatements the server refuses the joined text with 1064 and runs
// none of it. With it, the server stops at the first error and the driver
// returns that error, so an error reply means that the statements after
// the failing one did not run.
func (b *Branch) batch(ctx context.Context, stmts ...string) error {
	r := b.r
	if r.multi.Load() != multiOff {
		_, err := b.conn.ExecContext(ctx, strings.Join(stmts, "; "))
		if err == nil {
			r.multi.CompareAndSwap(multiUnknown, multiOn)
			return nil
		}
		if mysqlErrno(err) != erParse || r.multi.Load() == multiOn {
			return err
		}
		r.multi.Store(multiOff)
	}
	for _, s := range stmts {
		if _, err := b.conn.ExecContext(ctx, s); err != nil {
			return err
		}
	}
	return nil
}

// written reports whether the session wrote a row since Begin.
func (b *Branch) written(ctx context.Context) (bool, error) {
	if !b.countersOK || !b.r.cfg.ReadOnlyVote {
		return true, nil
	}
	v, err := b.r.serverVersion(ctx)
	if err != nil {
		return true, err
	}
	var after, count int64
	if err := b.conn.QueryRowContext(ctx, "SELECT "+b.r.countersExpr(v)).Scan(&after, &count); err != nil {
		if mysqlErrno(err) != 0 {
			return true, nil
		}
		return true, err
	}
	return count != 3 || after != b.before, nil
}

// Prepare ends the branch and votes. A branch that wrote no row is
// committed at once (XA COMMIT ONE PHASE) and votes
// resource.VoteReadOnly; any other is prepared. 1402, 1613 and 1614 refuse
// with resource.ErrPrepareRefused, as does an earlier statement error.
func (b *Branch) Prepare(ctx context.Context) (resource.Vote, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	what := "prepare of " + b.xid.String()
	if err := b.checkActive(what); err != nil {
		return 0, err
	}
	if b.failed != nil {
		return 0, fmt.Errorf("threepc/mysql: %s: %w: a statement of the branch failed: %w", what, resource.ErrPrepareRefused, withStatus(b.failed))
	}
	wrote, err := b.written(ctx)
	if err != nil {
		return 0, b.workFailed(what, err)
	}
	if !wrote {
		if err := b.exec(ctx, "XA END"); err != nil {
			return 0, b.endFailed(what, err)
		}
		if _, err := b.conn.ExecContext(ctx, "XA COMMIT "+b.lit+" ONE PHASE"); err != nil {
			return 0, b.onePhaseFailed(what, err, true)
		}
		b.state = stateCommitted
		b.readOnly = true
		b.release()
		return resource.VoteReadOnly, nil
	}
	// The evidence row, then the vote, in one round trip where the
	// connection allows it.
	if err := b.batch(ctx, evidenceSQL(b.xid), "XA END "+b.lit, "XA PREPARE "+b.lit); err != nil {
		switch {
		case isConnError(err) || isCtxError(err):
			b.state = statePrepareLost
			b.drop()
			return 0, wrapConn(what+" (the branch may be prepared: roll it back)", err)
		case mysqlErrno(err) == erDupEntry:
			b.state = stateRollbackOnly
			return 0, wrap(what+": the branch's evidence row exists already (its id was used before)", resource.ErrPrepareRefused, err)
		case mysqlErrno(err) == erNoSuchTable || mysqlErrno(err) == erBadField:
			b.state = stateRollbackOnly
			return 0, fmt.Errorf("%w: %w", resource.ErrPrepareRefused, b.r.markerError(what+": inserting the evidence row", err))
		}
		// An error reply means XA PREPARE did not happen: the branch is
		// ACTIVE (the INSERT failed), IDLE or rollback-only (XA END or XA
		// PREPARE refused, 1402/1613/1614), all of which Rollback ends.
		b.state = stateRollbackOnly
		return 0, wrap(what, resource.ErrPrepareRefused, err)
	}
	// The branch stays attached to its session and is finished there (on
	// MySQL with xa_detach_on_prepare=ON the server has detached it, and
	// Commit finishes it by id on the same connection).
	b.state = statePrepared
	return resource.VotePrepared, nil
}

func (b *Branch) checkActive(what string) error {
	switch {
	case b.closed:
		return fmt.Errorf("threepc/mysql: %s: branch is closed", what)
	case b.state != stateActive:
		return fmt.Errorf("threepc/mysql: %s: branch is %s, not active", what, b.state)
	}
	return nil
}

// workFailed handles a failure of the driver's own query while the branch
// is still active.
func (b *Branch) workFailed(what string, err error) error {
	if isConnError(err) || isCtxError(err) {
		// An unprepared XA dies with its session.
		b.state = stateRolledBack
		b.drop()
	}
	return wrapConn(what, err)
}

// endFailed handles an error of XA END.
func (b *Branch) endFailed(what string, err error) error {
	switch {
	case isRollbackOnly(err):
		b.state = stateRollbackOnly
		return wrap(what, resource.ErrPrepareRefused, err)
	case isConnError(err) || isCtxError(err):
		return b.workFailed(what, err)
	}
	b.state = stateRollbackOnly
	return wrap(what, resource.ErrPrepareRefused, err)
}

// onePhaseFailed handles an error of XA COMMIT ... ONE PHASE.
func (b *Branch) onePhaseFailed(what string, err error, readOnly bool) error {
	switch {
	case isConnError(err) || isCtxError(err):
		if readOnly {
			// Committed or rolled back, a branch without writes has the
			// same outcome either way.
			b.state = stateRolledBack
		} else {
			b.state = stateOnePhaseLost
		}
		b.drop()
		return wrapConn(what, err)
	case isRollbackOnly(err):
		b.state = stateRollbackOnly
		return wrap(what, resource.ErrPrepareRefused, err)
	}
	b.state = stateRollbackOnly
	return wrap(what, resource.ErrPrepareRefused, err)
}

// CommitOnePhase commits a branch that was never prepared: XA END, then
// XA COMMIT ... ONE PHASE. A branch with a failed statement refuses with
// resource.ErrPrepareRefused.
func (b *Branch) CommitOnePhase(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	what := "one-phase commit of " + b.xid.String()
	if err := b.checkActive(what); err != nil {
		return err
	}
	if b.failed != nil {
		return fmt.Errorf("threepc/mysql: %s: %w: a statement of the branch failed: %w", what, resource.ErrPrepareRefused, withStatus(b.failed))
	}
	if err := b.exec(ctx, "XA END"); err != nil {
		return b.endFailed(what, err)
	}
	if _, err := b.conn.ExecContext(ctx, "XA COMMIT "+b.lit+" ONE PHASE"); err != nil {
		return b.onePhaseFailed(what, err, false)
	}
	b.state = stateCommitted
	b.release()
	return nil
}

// Commit commits the prepared branch: on its pinned connection while that
// is alive, by id otherwise.
func (b *Branch) Commit(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	what := "commit of " + b.xid.String()
	switch b.state {
	case stateCommitted:
		return nil
	case statePrepared, statePrepareLost:
	case stateOnePhaseLost:
		return fmt.Errorf("threepc/mysql: %s: %w: the connection broke during the one-phase commit; its outcome is unknown", what, resource.ErrUnknownBranch)
	default:
		return fmt.Errorf("threepc/mysql: %s: branch is %s, not prepared", what, b.state)
	}
	return b.finishPrepared(ctx, what, true)
}

// finishPrepared commits or rolls back a prepared branch: on its own
// session while that is alive, else by id (Resource.finishByID, which
// takes the branch over from the ended session first).
//
// An OK on the session is authoritative on MariaDB, whose branch is
// attached to it. MySQL's never is (its branch may be detached: the XA
// COMMIT is then one by id, whatever the connection): the evidence row is
// read after it.
func (b *Branch) finishPrepared(ctx context.Context, what string, commit bool) error {
	if b.live {
		verb := "XA ROLLBACK"
		if commit {
			verb = "XA COMMIT"
		}
		err := b.exec(ctx, verb)
		if err == nil {
			b.release()
			if !commit {
				b.state = stateRolledBack
				return nil
			}
			if b.r.System() != "mariadb" {
				if err := b.r.proveCommit(ctx, what, b.xid, b.detachOnPrepare); err != nil {
					// The branch is not on this session any more; a
					// retry resolves it by id, through the evidence.
					return err
				}
			}
			b.state = stateCommitted
			return nil
		}
		switch {
		case isCtxError(err):
			b.drop()
			return wrapConn(what, err)
		case isConnError(err):
			// The session is gone: finish by id below.
			b.drop()
		case mysqlErrno(err) == erXAERNota || mysqlErrno(err) == erXARBRollback:
			// Not (or no longer) this session's branch: a detached MySQL
			// branch finished by someone else, say. Never proof of
			// anything: resolved by id, through the evidence.
			b.drop()
		default:
			return b.mapFinish(what, err)
		}
	}
	// The pinned connection is gone, but its session may still be running
	// the last statement: only once it has ended does XA RECOVER tell
	// the truth about the branch.
	if err := b.r.endSession(ctx, uint64(b.threadID)); err != nil {
		return fmt.Errorf("threepc/mysql: %s: %w", what, err)
	}
	err := b.r.finishByID(ctx, b.xid, commit)
	if err == nil {
		if commit {
			b.state = stateCommitted
		} else {
			b.state = stateRolledBack
		}
	}
	return err
}

// mapFinish maps an error of XA COMMIT/ROLLBACK on the pinned connection.
func (b *Branch) mapFinish(what string, err error) error {
	if mysqlErrno(err) == erXAERRmfail {
		return wrap(what, resource.ErrBranchBusy, err)
	}
	return wrapConn(what, err)
}

// Rollback rolls the branch back whatever its state. Called from another
// goroutine while a statement of the branch is running, it kills the
// branch's session first, which rolls the unprepared XA back at once.
func (b *Branch) Rollback(ctx context.Context) error {
	if b.running.Load() > 0 {
		b.killRunning(ctx)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	what := "rollback of " + b.xid.String()
	switch b.state {
	case stateRolledBack:
		return nil
	case stateCommitted:
		if b.readOnly {
			return nil
		}
		return fmt.Errorf("threepc/mysql: %s: the branch is already committed", what)
	case stateOnePhaseLost:
		return fmt.Errorf("threepc/mysql: %s: %w: the connection broke during the one-phase commit; its outcome is unknown", what, resource.ErrUnknownBranch)
	case stateActive, stateRollbackOnly:
		if b.live && !b.killed {
			// XA ROLLBACK of an ACTIVE branch fails with 1399: end it
			// first. A rollback-only branch may still be ACTIVE (a failed
			// INSERT of its evidence row). An error here (1399 for an IDLE
			// branch; 1402/1613/1614: already rolled back by the server)
			// still leaves the branch for XA ROLLBACK.
			_ = b.exec(ctx, "XA END")
			if err := b.exec(ctx, "XA ROLLBACK"); err == nil {
				b.state = stateRolledBack
				b.release()
				return nil
			}
		}
		// Whatever went wrong, an unprepared XA cannot outlive its
		// session: closing the connection rolls it back.
		b.state = stateRolledBack
		b.drop()
		return nil
	}
	// Prepared, or maybe prepared.
	return b.finishPrepared(ctx, what, false)
}

// killRunning kills the branch's session while a user statement runs on
// it (a lock wait of a distributed deadlock, say), so that Rollback need
// not wait for the statement.
func (b *Branch) killRunning(ctx context.Context) {
	b.mu.Lock()
	active := b.state == stateActive && b.live && b.threadID != 0 && !b.killed
	if active {
		b.killed = true
	}
	b.mu.Unlock()
	if active {
		_, _ = b.r.db.ExecContext(ctx, "KILL CONNECTION "+strconv.FormatInt(b.threadID, 10))
	}
}

// Close releases the pinned connection. A connection whose branch is not
// finished is discarded, never handed back to the pool; a prepared branch
// survives on the server, detached from the ended session, and is
// finished by id (which waits until the server has taken it over). Close
// is idempotent.
func (b *Branch) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	if b.live && (b.state == stateCommitted || b.state == stateRolledBack) && !b.killed {
		b.release()
		return nil
	}
	b.drop()
	return nil
}
