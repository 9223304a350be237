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
//     nothing that touches a table (1399 XAER_RMFAIL). A prepared branch
//     stays on its pinned session and Commit and Rollback run there; on
//     MariaDB that XA COMMIT's OK is authoritative. MySQL 8.0.29+ with
//     xa_detach_on_prepare=ON detaches the branch at prepare: its id then
//     records session 0, Commit finishes it by id on the same connection,
//     and no MySQL OK is taken as proof (the evidence row is read).
//   - The hand-over race. When a session holding a prepared XA ends,
//     MariaDB makes the xid takeable and drops the session from the
//     process list before InnoDB detaches the transaction from it; a by-id
//     XA COMMIT in that window answers OK and commits nothing. A branch id
//     carries the session that began it (resource.XID.Session), and every
//     by-id finish (Resource.CommitPrepared and RollbackPrepared, and a
//     Branch whose session broke) lists the branch with XA RECOVER, kills
//     the holding session if it still runs, waits until it has left the
//     process list and until information_schema.INNODB_TRX attributes no
//     transaction to it any more, and only then sends XA COMMIT/ROLLBACK.
//     INNODB_TRX is a cache that InnoDB refills only after 100 ms without
//     readers, so a poll counts only if it shows a transaction the polling
//     session started after the branch was prepared (a stale snapshot
//     would show nothing, which proves nothing). Reading INNODB_TRX needs
//     the PROCESS privilege, which Check verifies.
//   - Evidence. Prepare inserts the branch's evidence row (gtid, resource
//     name) into the marker table inside the branch, in the same round
//     trip as XA END and XA PREPARE: one multi-statement COM_QUERY. Open
//     sets go-sql-driver's MultiStatements on the connector it builds
//     (user statements on the branch may then hold several statements
//     too); a pool given to New may lack it, which the first Prepare
//     detects (1064, nothing ran) and then sends the three statements one
//     by one. An OK to a by-id XA COMMIT, 1397, 1402 or a branch missing
//     from XA RECOVER is never taken for a commit: the evidence row is
//     read (Resource.Committed), and a decided branch gone without it is
//     reported as resource.ErrHeuristic, naming what to do (restart the
//     MariaDB server, then run recovery).
//   - A connection is never handed back to the pool in any XA state:
//     Branch.Close discards (closes) a connection whose branch is not
//     finished, and the server rolls back an unprepared XA or detaches a
//     prepared one when the session ends (MariaDB 10.5+ and MySQL 8 keep
//     it, recoverable by id and listed by XA RECOVER).
//   - Read-only branches. MariaDB does not persist a prepared XA that wrote
//     nothing: once such a branch is detached the server has already
//     rolled it back, and XA COMMIT by id fails with 1402 XA_RBROLLBACK.
//     The evidence row makes every prepared branch a writer, so this no
//     longer happens to threepc branches. The read-only vote
//     (Config.ReadOnlyVote, off by default: it costs two status queries
//     on every branch) saves the prepare and the commit of a branch that
//     wrote nothing: the branch records the session's Handler_write,
//     Handler_update and Handler_delete counters before XA START and again
//     before XA END; if none moved, Prepare ends it with XA END + XA COMMIT ... ONE PHASE
//     and returns resource.VoteReadOnly (no evidence row: nothing is left
//     to decide). The counters count every row written through a storage
//     engine handler, including rows written by stored functions,
//     triggers, INSERT IGNORE attempts and user temporary tables, so a
//     branch that wrote is never classified read-only. With the vote off,
//     or if the counters cannot be read (MySQL with performance_schema
//     off), every branch votes prepared.
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
// ErrUnreachable. An error that carries a server answer also has its
// error number as a string ("1062") through a DBStatusCode method
// (tracing.StatusCoder), for the db.response.status_code attribute.
//
// A by-id finish that finds the branch unlisted resolves it through the
// evidence row: a commit is nil if the row is there and wraps
// resource.ErrHeuristic if not; a rollback wraps ErrUnknownBranch (or
// ErrHeuristic if the branch committed).
//
// # Databases and namespaces
//
// XA RECOVER lists the prepared XA transactions of the whole server, not
// of one schema. A branch's bqual carries the resource's name, the
// deployment's namespace tag and the tag of the schema
// (resource.DatabaseTag): Recover keeps only branches of this resource's
// name and schema, of every namespace. The schema is the DSN's database
// for Open (which refuses a DSN without one), else SELECT DATABASE() of
// the pool, read once.
//
// Branch ids carry their session, so the server cannot refuse a second
// Begin with an id already in use on another session (1440 XAER_DUPID
// only within one session); the evidence row's primary key refuses it at
// Prepare (resource.ErrPrepareRefused, 1062).
package mysql
