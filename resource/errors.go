package resource

import (
	"errors"
	"fmt"
)

// Sentinel errors. Drivers wrap them (with %w) around the database's own
// error, so callers match with errors.Is and still see the SQLSTATE or
// MySQL error number in the message and through errors.As.
var (
	// ErrInvalidName: a resource name that cannot be encoded in a branch
	// id. Returned before any database is touched.
	ErrInvalidName = errors.New("threepc: invalid resource name")
	// ErrInvalidID: a malformed gtid or branch id.
	ErrInvalidID = errors.New("threepc: invalid transaction id")

	// ErrUnknownBranch: the database has no such prepared branch
	// (PostgreSQL 42704, MySQL 1397 XAER_NOTA) and, where a commit was
	// asked for, no evidence either way was needed (rollback) or the
	// driver could not tell. It never says the branch committed.
	ErrUnknownBranch = errors.New("threepc: unknown branch")
	// ErrHeuristic: a branch's state contradicts the decision. The
	// transaction is decided to commit, but the prepared branch is gone
	// without its evidence row: rolled back by something outside threepc
	// (an operator's XA ROLLBACK / ROLLBACK PREPARED), or lost by the
	// server (MariaDB's hand-over race leaves an orphan that reappears,
	// prepared, after a server restart). Nothing may claim the branch
	// committed, and its marker rows must stay.
	ErrHeuristic = errors.New("threepc: heuristic outcome")
	// ErrBranchExists: a branch with this id already exists (PostgreSQL
	// 42710, MySQL 1440 XAER_DUPID).
	ErrBranchExists = errors.New("threepc: branch id already in use")
	// ErrPrepareRefused: the branch cannot be prepared and has been or must
	// be rolled back (a failed transaction, MySQL 1402/1613/1614, a
	// serialization failure, PostgreSQL 0A000 for temporary tables, ...).
	ErrPrepareRefused = errors.New("threepc: branch refused to prepare")
	// ErrBranchBusy: the prepared branch is in use by another session
	// (PostgreSQL 55000, MySQL 1399 XAER_RMFAIL from another session). Retry
	// later.
	ErrBranchBusy = errors.New("threepc: branch busy")
	// ErrTooManyPrepared: the server's limit on prepared transactions is
	// reached (PostgreSQL 53200).
	ErrTooManyPrepared = errors.New("threepc: too many prepared transactions")

	// ErrMarkerExists: InsertMarker found a row for the gtid already.
	ErrMarkerExists = errors.New("threepc: marker row already exists")
	// ErrNoMarker: ReadMarker found no row for the gtid.
	ErrNoMarker = errors.New("threepc: no marker row")

	// ErrPreparedTransactionsDisabled: PostgreSQL max_prepared_transactions
	// is 0.
	ErrPreparedTransactionsDisabled = errors.New("threepc: prepared transactions are disabled")
	// ErrMissingPrivilege: the database user lacks a privilege threepc
	// needs (for example XA_RECOVER_ADMIN on MySQL 8).
	ErrMissingPrivilege = errors.New("threepc: missing privilege")
	// ErrMarkerTableMissing: the marker table does not exist; run the
	// migrations (package migrations, or `threepc migrate`).
	ErrMarkerTableMissing = errors.New("threepc: marker table missing")
	// ErrUnreachable: the server could not be reached, or the connection
	// broke. The outcome of a statement that was in flight is unknown.
	ErrUnreachable = errors.New("threepc: database unreachable")
	// ErrConnectionRejected: the server answered, and turned the connection
	// down: authentication failed, the user may not use the database, the
	// database does not exist, or a connection parameter is unknown or
	// invalid (PostgreSQL class 28, 3D000, 42704 and 22023 at start-up;
	// MySQL 1044, 1045, 1698, 1049, 1193). It is not transient: retrying
	// gives the same answer until the configuration (the URL, the user's
	// grants, the database) is fixed. It never matches ErrUnreachable, so
	// code that retries on that sentinel does not retry a wrong password.
	// A refused TCP connection (nothing listening) is ErrUnreachable.
	ErrConnectionRejected = errors.New("threepc: the server rejected the connection")
	// ErrUnsupported: the server version or configuration is not supported.
	ErrUnsupported = errors.New("threepc: unsupported database")
)

// Phase names a step of the protocol, for errors and telemetry.
type Phase string

// The protocol's phases.
// Each is also the threepc.phase attribute's value, and all but begin and
// work name a span: "threepc." + the phase.
const (
	PhaseBegin          Phase = "begin"            // enlisting a branch
	PhaseWork           Phase = "work"             // the caller's statements
	PhasePrepare        Phase = "prepare"          // the vote
	PhaseDecide         Phase = "decide"           // the precommit row at the primary: the commit point
	PhasePreCommit      Phase = "precommit"        // 3PC: precommit rows at the other participants
	PhaseCommit         Phase = "commit"           // commit every prepared branch
	PhaseRollback       Phase = "rollback"         // roll back every branch (abort path, Rollback)
	PhaseCleanup        Phase = "cleanup"          // delete the marker rows
	PhaseCommitOnePhase Phase = "commit_one_phase" // single participant: local commit, no prepare
)

// BranchError is an error of one branch in one phase.
type BranchError struct {
	Resource string
	Phase    Phase
	Err      error
}

func (e *BranchError) Error() string {
	return fmt.Sprintf("threepc: %s on %q: %v", e.Phase, e.Resource, e.Err)
}

func (e *BranchError) Unwrap() error { return e.Err }

// IsConnectionError reports whether err means the connection or server
// failed, so that the outcome of the statement in flight is unknown and a
// retry on a new connection may succeed.
func IsConnectionError(err error) bool { return errors.Is(err, ErrUnreachable) }
