// Package postgres is the threepc driver for PostgreSQL, built on pgx v5
// through its database/sql adapter (github.com/jackc/pgx/v5/stdlib).
//
// A branch is a transaction on one pinned connection, prepared with
// PREPARE TRANSACTION under the gid resource.XID.PostgresGID and finished
// with COMMIT PREPARED or ROLLBACK PREPARED, from that connection or from
// any other connection to the same database.
//
// Prepare inserts the branch's evidence row (resource.Resource.Committed)
// into the marker table in the same round trip as PREPARE TRANSACTION, so
// the row is visible exactly when the branch committed. COMMIT PREPARED's
// OK is authoritative and needs no read; "no such gid" (42704) on a commit
// proves nothing, and the evidence row decides between "committed by
// someone else" and resource.ErrHeuristic.
//
// The PostgreSQL traps this driver handles:
//
//   - PREPARE TRANSACTION inside a failed transaction does not fail: it
//     rolls back and answers with the command tag ROLLBACK, which
//     database/sql hides. Prepare checks the session's transaction status
//     before it prepares and reads the command tag through pgx, so a failed
//     branch is always refused (resource.ErrPrepareRefused), never reported
//     as prepared. COMMIT of a failed transaction has the same trap, and
//     CommitOnePhase reports it the same way.
//   - max_prepared_transactions defaults to 0. Check reports it with
//     resource.ErrPreparedTransactionsDisabled and says how to fix it.
//   - A connection still inside a transaction must not go back to the
//     pool, where it would keep its locks until reused. Branch.Close
//     discards such a connection. A prepared transaction is detached from
//     its session, so after PREPARE the connection is clean and is reused.
//   - Gids are unique per server, not per database, and only the preparing
//     user (or a superuser) connected to the same database can finish a
//     prepared transaction. The gid carries the branch's resource name, and
//     Recover lists only this database's branches of this resource.
//   - Temporary tables, LISTEN and WITH HOLD cursors make PREPARE fail with
//     SQLSTATE 0A000: the branch is refused.
//
// SQLSTATEs are mapped to the resource package's sentinels, with the
// server's *pgconn.PgError kept in the chain: 42704 -> ErrUnknownBranch
// (at a rollback; at a commit see above),
// 42710 -> ErrBranchExists, 55000 -> ErrBranchBusy (or
// ErrPreparedTransactionsDisabled), 53200 -> ErrTooManyPrepared, 42501 ->
// ErrMissingPrivilege, 0A000 at PREPARE -> ErrPrepareRefused and at COMMIT
// PREPARED ("belongs to another database") -> ErrUnsupported, 23505 on the
// marker table -> ErrMarkerExists, 42P01 -> ErrMarkerTableMissing. Broken
// connections, and statements whose context ended while they were in
// flight, wrap ErrUnreachable: their outcome is unknown.
package postgres
