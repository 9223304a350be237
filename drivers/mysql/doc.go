// Package mysql is the threepc driver for MySQL 8 and MariaDB 10.5+, on
// github.com/go-sql-driver/mysql, using XA transactions.
//
// A Resource is one schema on one server; a Branch is one XA transaction
// branch run on a connection pinned from the pool (*sql.Conn) from Begin
// until the branch is finished.
//
// # Traps handled
//
//   - XA cannot run inside sql.Tx (database/sql sends START TRANSACTION), so
//     every branch runs on a pinned *sql.Conn and the driver sends XA START,
//     XA END, XA PREPARE, XA COMMIT and XA ROLLBACK itself. XA ids are
//     literals, never bind parameters: they are validated
//     (resource.XID.Validate) and written as hexadecimal literals
//     (X'...'), which need no escaping whatever the sql_mode or charset.
//   - MariaDB (and MySQL before 8.0.29 or with xa_detach_on_prepare=OFF)
//     keeps a prepared XA attached to the session that prepared it: another
//     session gets 1397 XAER_NOTA for it, and the owning session can run
//     nothing that touches a table (1399 XAER_RMFAIL). Recovery must be
//     able to finish the branch of a stalled coordinator, so by default
//     Prepare detaches the branch itself: right after XA PREPARE it ends
//     the pinned session (the connection is discarded, not pooled) and
//     waits until the session has left the process list (MariaDB detaches
//     the XA in THD::cleanup, before that), killing it if it lingers (own
//     sessions need no privilege). Commit and Rollback then finish the
//     branch by id from a pool connection, as recovery would. This costs
//     one reconnect per prepared branch; Config.KeepAttached keeps the
//     branch on its session instead and commits it there, at the price of
//     recovery seeing 1397 for it until the coordinator's connection dies
//     (the branch then kills the old session and waits the same way
//     before going by id). MySQL 8.0.29+ with xa_detach_on_prepare=ON
//     detaches at prepare by itself; the pinned connection is then clean
//     and goes back to the pool right after XA PREPARE.
//   - A connection is never handed back to the pool in any XA state:
//     Branch.Close discards (closes) a connection whose branch is not
//     finished, and the server rolls back an unprepared XA or detaches a
//     prepared one when the session ends (MariaDB 10.5+ and MySQL 8 keep
//     it, recoverable by id and listed by XA RECOVER).
//   - Read-only branches. MariaDB does not persist a prepared XA that wrote
//     nothing: once such a branch is detached (its session ended) the server
//     has already rolled it back, still lists it in XA RECOVER, and XA
//     COMMIT and XA ROLLBACK by id both fail with 1402 XA_RBROLLBACK (and
//     remove it). The driver therefore votes read-only itself: the branch
//     records the session's Handler_write, Handler_update and
//     Handler_delete counters before XA START and again before XA END; if
//     none moved, the branch wrote no row in any table, and Prepare ends it
//     with XA END + XA COMMIT ... ONE PHASE and returns
//     resource.VoteReadOnly: nothing is left prepared and no Commit is
//     needed. The counters count every row written through a storage
//     engine handler, including rows written by stored functions,
//     triggers, INSERT IGNORE attempts and user temporary tables, so a
//     branch that wrote is never classified read-only (a few that did not
//     write in a way that matters are classified as writers, which is only
//     slower). information_schema.INNODB_TRX was rejected: it needs the
//     PROCESS privilege and is a cache refreshed at most every 100 ms, so
//     it misses a session's latest writes. If the counters cannot be read
//     (MySQL with performance_schema off), every branch votes prepared.
//     A branch the driver voted prepared that MariaDB nevertheless considers
//     read-only, found detached, answers 1402 on XA COMMIT/ROLLBACK by id;
//     on MariaDB that code on a detached prepared XA means exactly this
//     (the server sets it only for read-only branches on detach), so
//     CommitPrepared and RollbackPrepared return nil for it.
//   - Rollback handles every branch state: ACTIVE (XA END first), IDLE,
//     rollback-only after 1402/1613/1614, PREPARED (on the pinned
//     connection, or by id), and a prepare whose outcome is unknown.
//     Rollback from another goroutine while a statement of the branch is
//     running kills the branch's session, so a distributed deadlock is
//     broken at once rather than after innodb_lock_wait_timeout.
//   - Statement errors. MySQL rolls back only the failing statement and
//     keeps the transaction going; the branch instead remembers the first
//     error any of its ExecContext, QueryContext, QueryRowContext or
//     PrepareContext calls returned, and Prepare (and CommitOnePhase) then
//     refuse with resource.ErrPrepareRefused, as PostgreSQL would, so that
//     a swallowed error never commits half of the work. Errors that only
//     surface later (Rows.Err, statements run through a *sql.Stmt from
//     PrepareContext) are not seen by the branch.
//   - MySQL 8 needs the XA_RECOVER_ADMIN privilege for XA RECOVER: Check
//     runs XA RECOVER and reports 1227 as resource.ErrMissingPrivilege
//     with the GRANT to run.
//
// # Error mapping
//
// MySQL error numbers are mapped to the sentinels of package resource and
// the *mysql.MySQLError stays in the chain (errors.As works): 1402
// XA_RBROLLBACK, 1613 XA_RBTIMEOUT and 1614 XA_RBDEADLOCK at prepare ->
// ErrPrepareRefused; 1397 XAER_NOTA -> ErrUnknownBranch; 1399 XAER_RMFAIL
// from another session -> ErrBranchBusy; 1440 XAER_DUPID ->
// ErrBranchExists; 1062 on the marker table -> ErrMarkerExists; 1146 ->
// ErrMarkerTableMissing; broken connections (driver.ErrBadConn,
// mysql.ErrInvalidConn, io.EOF, network errors, 1053, 1927, 2006, 2013) ->
// ErrUnreachable.
//
// On MariaDB, 1397 for a prepared branch by id can also mean that the
// branch is still attached to a live session (a coordinator's pinned
// connection with Config.KeepAttached, or a session still ending). XA
// RECOVER lists such a branch, so CommitPrepared and RollbackPrepared
// check it after a 1397 and report ErrBranchBusy for a listed branch,
// ErrUnknownBranch only for one the server does not list. Recovery must
// still treat ErrUnknownBranch as "re-read the markers", never as "done",
// as PROTOCOL.md requires.
//
// # Resource names
//
// XA RECOVER lists the prepared XA transactions of the whole server, not
// of one schema. Recover keeps only branches whose bqual (the branch's
// resource name) is this resource's name, so resource names must be unique
// per server: two resources with the same name on two schemas of one
// server would recover each other's branches.
package mysql
