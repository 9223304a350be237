package mysql

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"time"

	"github.com/threepc/threepc/resource"
)

// maxByIDAttempts bounds how often a by-id finish starts over after 1397
// XAER_NOTA for a branch that XA RECOVER still lists.
const maxByIDAttempts = 5

// finishByID commits or rolls back a prepared branch from a pool
// connection, whoever holds it:
//
//  1. XA RECOVER: a branch that is not listed is gone; the evidence row
//     tells whether it committed (see gone).
//  2. The branch is listed with the session S that began it (xid.Session):
//     while S is in the process list, the branch is attached to it, and
//     S is killed (the listing is read again right before the KILL).
//  3. Wait until S has left the process list and the storage engine has
//     taken the transaction over (awaitEngine). MariaDB makes the xid
//     takeable by other sessions before InnoDB detaches the transaction
//     from the session; a by-id XA COMMIT in between answers OK and
//     commits nothing (the hand-over race). This wait is never skipped.
//  4. XA COMMIT/ROLLBACK by id. An OK to a by-id commit is no proof: the
//     evidence row is read. 1397 starts over at 1.
//
// Session 0 (MySQL with xa_detach_on_prepare=ON, where the server detaches
// the branch at prepare) skips 2 and 3.
func (r *Resource) finishByID(ctx context.Context, xid resource.XID, commit bool) error {
	_, tag, err := r.serverInfo(ctx)
	if err != nil {
		return err
	}
	verb := "XA ROLLBACK"
	if commit {
		verb = "XA COMMIT"
	}
	what := fmt.Sprintf("%s of %s by id", verb, xid)
	var last error
	for range maxByIDAttempts {
		cur, ok, err := r.findListed(ctx, xid, tag)
		if err != nil {
			return fmt.Errorf("threepc/mysql: %s: %w", what, err)
		}
		if !ok {
			return r.gone(ctx, what, xid, commit, last)
		}
		if cur.Session != 0 {
			listed, err := r.takeOver(ctx, cur, tag)
			if err != nil {
				return fmt.Errorf("threepc/mysql: %s: %w", what, err)
			}
			if !listed {
				continue
			}
		}
		err = r.execByID(ctx, verb+" "+xidLiteral(cur, tag))
		switch {
		case err == nil && commit:
			return r.proveCommit(ctx, what, xid, true)
		case err == nil:
			return nil
		case mysqlErrno(err) == erXAERNota:
			// Finished by someone else meanwhile, or still attached
			// (a session that began ending after the wait): look again.
			last = err
			continue
		case mysqlErrno(err) == erXARBRollback:
			return r.gone(ctx, what, xid, commit, err)
		case mysqlErrno(err) == erXAERRmfail:
			return wrap(what, resource.ErrBranchBusy, err)
		}
		return r.unreachable(what, err)
	}
	return wrap(what+": XA RECOVER keeps listing the branch, but the server answers 1397 to every attempt", resource.ErrBranchBusy, last)
}

// findListed returns the branch xid as XA RECOVER lists it (its Session
// as the server knows it), and whether it is listed.
func (r *Resource) findListed(ctx context.Context, xid resource.XID, tag string) (resource.XID, bool, error) {
	all, err := r.recover(ctx)
	if err != nil {
		return resource.XID{}, false, err
	}
	for _, p := range all {
		if p.dbTag == tag && p.xid.SameBranch(xid) {
			return p.xid, true, nil
		}
	}
	return resource.XID{}, false, nil
}

// execByID runs a by-id XA statement on a connection of its own, which an
// error without a server answer discards.
func (r *Resource) execByID(ctx context.Context, stmt string) error {
	conn, err := r.db.Conn(ctx)
	if err != nil {
		return err
	}
	_, err = conn.ExecContext(ctx, stmt)
	if err != nil && mysqlErrno(err) == 0 {
		discard(conn)
	} else {
		_ = conn.Close()
	}
	return err
}

// proveCommit reads the evidence row after an OK that is not
// authoritative. byID says the OK answered a by-id XA COMMIT.
func (r *Resource) proveCommit(ctx context.Context, what string, xid resource.XID, byID bool) error {
	ok, err := r.Committed(ctx, xid)
	if err != nil {
		return fmt.Errorf("threepc/mysql: %s: the server answered OK, but its evidence could not be read (retry the commit; it is resolved by the evidence): %w", what, err)
	}
	if !ok {
		return heuristic(what, byID, nil)
	}
	return nil
}

// gone resolves a branch that the server does not have (any more) by its
// evidence row: a commit is done if the row is there and heuristic if
// not; a rollback of a committed branch is heuristic, else the branch is
// unknown (or, after 1402, rolled back by the server). cause is the
// server's answer, if any.
func (r *Resource) gone(ctx context.Context, what string, xid resource.XID, commit bool, cause error) error {
	committed, err := r.Committed(ctx, xid)
	if err != nil {
		return fmt.Errorf("threepc/mysql: %s: the branch is not prepared, and its evidence could not be read: %w", what, err)
	}
	switch {
	case commit && committed:
		return nil
	case commit:
		return heuristic(what, false, cause)
	case committed:
		return fmt.Errorf("threepc/mysql: %s: %w: the branch committed (its evidence row is there), it cannot be rolled back", what, resource.ErrHeuristic)
	case mysqlErrno(cause) == erXARBRollback:
		// The server rolled it back itself (a branch without writes).
		return nil
	case cause != nil:
		return wrap(what+": the branch is not prepared", resource.ErrUnknownBranch, cause)
	}
	return fmt.Errorf("threepc/mysql: %s: %w: XA RECOVER does not list the branch", what, resource.ErrUnknownBranch)
}

// takeOver ends the session that holds the prepared branch x (KILL, once,
// while it is in the process list) and waits until the server has handed
// the branch to the storage engine. listed is false if the branch was no
// longer listed right before the KILL: the caller starts over.
func (r *Resource) takeOver(ctx context.Context, x resource.XID, tag string) (listed bool, err error) {
	id := strconv.FormatUint(x.Session, 10)
	killed := false
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		var n int
		// A literal, not a bind parameter: one round trip instead of a
		// server-side prepare and execute.
		err := r.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = "+id).Scan(&n)
		if err != nil {
			return false, r.unreachable("looking for the session that holds the branch", err)
		}
		if n == 0 {
			break
		}
		if !killed {
			killed = true
			// The session may have finished the branch meanwhile and run
			// other work since: look once more right before the KILL.
			if _, ok, err := r.findListed(ctx, x, tag); err != nil || !ok {
				return false, err
			}
			_, err := r.db.ExecContext(ctx, "KILL CONNECTION "+id)
			if err != nil && mysqlErrno(err) != erUnknownThread {
				return false, r.unreachable("killing the session that holds the branch", err)
			}
			continue
		}
		if err := sleep(ctx, delay); err != nil {
			return false, fmt.Errorf("%w: session %s, which holds the branch, is still ending: %w", resource.ErrBranchBusy, id, err)
		}
	}
	return true, r.awaitEngine(ctx, x.Session)
}

// endSession kills session id (a session of this resource's branch whose
// connection was discarded, so it runs nothing else) and waits until it
// has left the process list. Until then a statement it was running (an XA
// PREPARE whose client gave up, say) may still take effect, so neither a
// listing nor its absence would be final.
func (r *Resource) endSession(ctx context.Context, id uint64) error {
	s := strconv.FormatUint(id, 10)
	killed := false
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		var n int
		err := r.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = "+s).Scan(&n)
		if err != nil {
			return r.unreachable("waiting for the branch's old session to end", err)
		}
		if n == 0 {
			return nil
		}
		if !killed {
			killed = true
			if _, err := r.db.ExecContext(ctx, "KILL CONNECTION "+s); err != nil && mysqlErrno(err) != erUnknownThread {
				return r.unreachable("killing the branch's old session", err)
			}
			continue
		}
		if err := sleep(ctx, delay); err != nil {
			return fmt.Errorf("%w: the branch's old session %s is still ending: %w", resource.ErrBranchBusy, s, err)
		}
	}
}

// trxCacheIdle is how long information_schema.INNODB_TRX must go unread
// before the server refreshes it: InnoDB serves it from a cache that is
// refilled only when nobody has read it for 100 ms (CACHE_MIN_IDLE_TIME
// in trx0i_s.cc), so polling it faster sees one frozen snapshot forever.
const trxCacheIdle = 110 * time.Millisecond

// trxCache serialises this process's reads of INNODB_TRX, so that a
// reader that needs a fresh snapshot can leave the cache unread long
// enough for a refill. Readers in other processes can still keep it
// frozen; the freshness check in awaitEngine makes that a delay, never a
// wrong answer.
var trxCache = struct {
	sem  chan struct{}
	last time.Time
}{sem: make(chan struct{}, 1)}

// awaitEngine waits until InnoDB no longer attributes any transaction to
// session s: InnoDB detaches a prepared transaction from its ending
// session (trx_disconnect_prepared: thread id 0, recoverable by id) only
// after the server has made the xid takeable and removed the session from
// the process list.
//
// Absence from a stale snapshot would prove nothing, so the reading
// session runs a transaction of its own, started after the branch was
// prepared, and a snapshot counts only if it shows that transaction.
func (r *Resource) awaitEngine(ctx context.Context, s uint64) error {
	const what = "waiting until InnoDB has taken the branch over from its session"
	conn, err := r.db.Conn(ctx)
	if err != nil {
		return r.unreachable(what, err)
	}
	if _, err := conn.ExecContext(ctx, "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY"); err != nil {
		discard(conn)
		return r.unreachable(what, err)
	}
	clean := false
	defer func() {
		if clean {
			if _, err := conn.ExecContext(context.WithoutCancel(ctx), "ROLLBACK"); err == nil {
				_ = conn.Close()
				return
			}
		}
		discard(conn)
	}()
	q := "SELECT COUNT(CASE WHEN trx_mysql_thread_id = CONNECTION_ID() THEN 1 END), COUNT(CASE WHEN trx_mysql_thread_id = " +
		strconv.FormatUint(s, 10) + " THEN 1 END) FROM information_schema.INNODB_TRX"
	fresh := false
	for {
		own, held, err := readTrxCache(ctx, conn, q, fresh)
		if err != nil {
			if n := mysqlErrno(err); n == erAccessDenied || n == erDBAccessDenied {
				return wrap(what+": reading information_schema.INNODB_TRX needs the PROCESS privilege; run: GRANT PROCESS ON *.* TO '<user>'@'<host>'", resource.ErrMissingPrivilege, err)
			}
			if isCtxError(err) && ctx.Err() != nil {
				return fmt.Errorf("%w: %s: %w", resource.ErrBranchBusy, what, err)
			}
			return r.unreachable(what, err)
		}
		if own > 0 && held == 0 {
			clean = true
			return nil
		}
		// Stale, or still held: the next read must refill the cache.
		fresh = true
	}
}

// readTrxCache runs q on conn. fresh makes it wait until this process has
// left INNODB_TRX unread long enough for the server to refill it.
func readTrxCache(ctx context.Context, conn *sql.Conn, q string, fresh bool) (own, held int, err error) {
	select {
	case trxCache.sem <- struct{}{}:
	case <-ctx.Done():
		return 0, 0, ctx.Err()
	}
	defer func() {
		trxCache.last = time.Now()
		<-trxCache.sem
	}()
	if fresh {
		if err := sleep(ctx, time.Until(trxCache.last.Add(trxCacheIdle))); err != nil {
			return 0, 0, err
		}
	}
	err = conn.QueryRowContext(ctx, q).Scan(&own, &held)
	return own, held, err
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
