// Package resource defines the contract between the threepc coordinator,
// the recovery scanner and the database drivers.
//
// A Resource is one participant database (one PostgreSQL database, one
// MySQL or MariaDB schema) registered under a short name. A Branch is that
// resource's piece of one global transaction, running on a connection that
// is pinned to it from Begin until the branch is finished. Drivers live in
// drivers/...; this package depends on the standard library only, so the
// coordinator and the recovery scanner never depend on a driver.
//
// Every driver must pass the conformance suite in resource/resourcetest.
package resource

import (
	"context"
	"database/sql"
	"io"
	"time"
)

// DBTX is the query surface of a branch. It is the interface that sqlc
// generates for its Queries type, so `queries.New(branch)` runs a user's
// existing queries inside a distributed transaction unchanged.
type DBTX interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	PrepareContext(ctx context.Context, query string) (*sql.Stmt, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Resource is one participant database.
//
// Methods that take an XID rather than a Branch (CommitPrepared,
// RollbackPrepared) work from any connection of the resource; recovery uses
// them for branches whose coordinator is gone.
//
// Implementations must be safe for concurrent use.
type Resource interface {
	// Name is the resource's registered name (see ValidateName).
	Name() string

	// System is the database system, as the OpenTelemetry semantic
	// conventions name it: "postgresql", "mysql" or "mariadb".
	System() string

	// Check verifies that the resource can take part in distributed
	// transactions: the server is reachable, prepared transactions are
	// enabled, the user has the privileges recovery needs, and the marker
	// table exists. Each failure wraps one of the Err* sentinels of this
	// package and says how to fix it.
	Check(ctx context.Context) error

	// Begin starts a branch with the given id on a connection pinned to it.
	Begin(ctx context.Context, xid XID) (Branch, error)

	// CommitPrepared commits a prepared branch by id. nil means the
	// branch is committed, proven: by an answer the database makes
	// authoritative (PostgreSQL's COMMIT PREPARED) or by its evidence row
	// (Committed), never by an OK the database does not guarantee (a
	// by-id XA COMMIT on MariaDB/MySQL). A branch that is no longer
	// prepared is committed if its evidence is there; without it the
	// error wraps ErrHeuristic. A branch held by another live session
	// wraps ErrBranchBusy (MySQL/MariaDB drivers end a session that holds
	// the branch first, then wait until the server has taken it over).
	CommitPrepared(ctx context.Context, xid XID) error

	// RollbackPrepared rolls back a prepared branch by id. A branch that
	// is no longer prepared gives an error wrapping ErrUnknownBranch, or
	// ErrHeuristic when its evidence shows that it committed.
	RollbackPrepared(ctx context.Context, xid XID) error

	// Recover lists the prepared branches on this resource's database
	// whose id carries the product prefix, whatever their namespace
	// (XID.Space): recovery keeps only its own. Prepared transactions of
	// other software, and branches of other databases on the same server,
	// are not listed.
	Recover(ctx context.Context) ([]PreparedBranch, error)

	// Committed reports whether the branch's evidence row is visible: the
	// row that Prepare (or CommitWithMarker) inserted inside the branch's
	// own transaction, so it is visible exactly when the branch committed
	// and until the gtid's rows are deleted (DeleteMarkers). xid.Session
	// is ignored.
	Committed(ctx context.Context, xid XID) (bool, error)

	// The marker table in the resource's database.
	MarkerStore
}

// MarkerStore is the marker table of a participant database: the
// decision and abort rows of the protocol (see PROTOCOL.md) and the
// tombstones that outlive them.
type MarkerStore interface {
	// InsertMarker inserts a marker row. It is a compare-and-set on the
	// gtid: if a marker row for the gtid already exists (whatever its
	// state, tombstones included) the insert fails with an error wrapping
	// ErrMarkerExists and changes nothing.
	InsertMarker(ctx context.Context, m Marker) error

	// ReadMarker reads the marker row of gtid, or returns an error wrapping
	// ErrNoMarker.
	ReadMarker(ctx context.Context, gtid string) (Marker, error)

	// ListMarkers lists every marker row (not the evidence rows), ordered
	// by gtid.
	ListMarkers(ctx context.Context) ([]Marker, error)

	// Tombstone turns the precommit marker rows of the given gtids into
	// StateCommitted tombstones, in one statement. Rows in another state,
	// and missing rows, are left alone.
	Tombstone(ctx context.Context, gtids ...string) error

	// DeleteMarkers deletes every row of the given gtids: marker rows,
	// tombstones and evidence rows. Missing rows are not an error.
	DeleteMarkers(ctx context.Context, gtids ...string) error
}

// Pooled is an optional interface of a Resource: the connection pool it
// runs on, for migrations, pool settings and the application's own
// statements. Connections handed back to it are never in a transaction
// or XA state. Both drivers implement it, and io.Closer (Close releases
// the pool if the resource opened it).
type Pooled interface {
	DB() *sql.DB
}

// DBOf returns r's connection pool, or nil if r is not Pooled.
func DBOf(r Resource) *sql.DB {
	if p, ok := r.(Pooled); ok {
		return p.DB()
	}
	return nil
}

// Vote is a branch's answer to Prepare.
type Vote int

const (
	// VotePrepared means the branch is durably prepared and must be
	// finished with Commit or Rollback (or by id, from any connection).
	VotePrepared Vote = iota + 1
	// VoteReadOnly means the branch wrote nothing and is already finished:
	// it needs neither commit nor rollback, and holds no prepared state.
	VoteReadOnly
)

func (v Vote) String() string {
	switch v {
	case VotePrepared:
		return "prepared"
	case VoteReadOnly:
		return "read-only"
	}
	return "invalid"
}

// Branch is one resource's piece of a global transaction, pinned to one
// connection. Its DBTX methods run the user's statements inside the branch.
//
// A Branch is not safe for concurrent use, except that Rollback may be
// called from another goroutine to abandon the branch.
type Branch interface {
	DBTX

	// XID is the branch's id.
	XID() XID

	// Prepare ends the work phase and prepares the branch (the vote). A
	// branch that votes VotePrepared has inserted its evidence row (see
	// Resource.Committed) inside its transaction first, in the same round
	// trip where the driver can. An error means the branch is not
	// prepared; the caller must still call Rollback to release it. A
	// branch whose transaction has already failed (a statement error)
	// refuses with an error wrapping ErrPrepareRefused and is never
	// reported as prepared.
	Prepare(ctx context.Context) (Vote, error)

	// Commit commits the prepared branch, on its own session while that
	// lives (where the answer is authoritative), else by id. nil means
	// committed, proven, as for Resource.CommitPrepared; a branch gone
	// without its evidence gives an error wrapping ErrHeuristic.
	Commit(ctx context.Context) error

	// CommitOnePhase commits a branch that was never prepared, as an
	// ordinary local transaction.
	CommitOnePhase(ctx context.Context) error

	// Rollback rolls the branch back, whatever its state (active, failed or
	// prepared). Rolling back a branch that is already finished returns nil
	// when the driver can tell; ErrUnknownBranch otherwise.
	Rollback(ctx context.Context) error

	// Close releases the pinned connection. A connection that is still in
	// a transaction or XA state is discarded, never handed back to the
	// pool; a prepared branch survives that on the server. Close is
	// idempotent.
	Close() error
}

// PreparedBranch is a prepared branch found by Resource.Recover.
type PreparedBranch struct {
	XID XID
	// PreparedAt is when the server prepared the branch, when the server
	// records it (PostgreSQL does, MySQL does not); zero otherwise. Use
	// XID.Time for an age that works everywhere.
	PreparedAt time.Time
	// Owner is the database user that prepared the branch, when known.
	Owner string
}

// MarkerCommitter is an optional Branch ability, found by type assertion:
// commit the branch one-phase with a marker row inserted inside its own
// transaction. The coordinator uses it for the "logging last resource"
// optimization: the primary's branch is never prepared, and its local
// commit is the commit point, atomically with the decision row.
//
// CommitWithMarker inserts m (a compare-and-set on the gtid, as
// InsertMarker) and the branch's evidence row in the branch's transaction
// and commits it. If a row for
// the gtid exists it fails with an error wrapping ErrMarkerExists and the
// branch is rolled back. A connection error leaves the outcome unknown:
// the caller resolves it through the marker table, where the gtid's
// primary key serializes the commit against any other insert.
type MarkerCommitter interface {
	CommitWithMarker(ctx context.Context, m Marker) error
}

// MarkerBatcher is an optional Resource ability, found by type assertion:
// many marker rows in one statement, the coordinator's group commit of
// the decision and pre-commit rows of concurrent transactions.
//
// InsertMarkers inserts ms, whose gtids are distinct, in one statement.
// Each row is a compare-and-set on its gtid, as for InsertMarker, except
// that a row already there is not an error: states[i] is the state of
// ms[i].GTID's marker row once the statement is done, so it equals
// ms[i].State when ms[i] went in or a row in that state was there before,
// and is the other row's state otherwise. The statement is atomic: an
// error means that no row went in (a refusal) or, when it is a connection
// error, that the outcome of every row is unknown, each to be resolved as
// after InsertMarker's. A resource whose server cannot answer per row
// returns an error wrapping ErrUnsupported without touching the
// database.
type MarkerBatcher interface {
	InsertMarkers(ctx context.Context, ms []Marker) (states []MarkerState, err error)
}

// Close closes r if it is an io.Closer (both drivers are: Close releases
// the pool the resource opened), else does nothing.
func Close(r Resource) error {
	if c, ok := r.(io.Closer); ok {
		return c.Close()
	}
	return nil
}
