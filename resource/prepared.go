package resource

import (
	"context"
	"time"
)

// ServerPreparedLister is an optional Resource ability, found by type
// assertion: list every prepared transaction the server holds, threepc's
// and other software's, of every namespace. Recover lists only this
// resource's own branches and is what recovery acts on; this list is for
// operators (forgotten prepared transactions hold locks and, on
// PostgreSQL, hold back VACUUM), so nothing is left out and nothing is
// acted on.
type ServerPreparedLister interface {
	// ListServerPrepared lists the server's prepared transactions.
	ListServerPrepared(ctx context.Context) ([]ServerPrepared, error)
}

// ServerPrepared is one prepared transaction listed by
// ServerPreparedLister.
type ServerPrepared struct {
	// ID is the transaction's id as the server names it: PostgreSQL's
	// gid; on MySQL and MariaDB the XA id as an XA statement takes it
	// (X'gtrid',X'bqual',formatID).
	ID string

	// Ours reports whether ID parses as a threepc branch id
	// (ParsePostgresGID, ParseMySQL), of any namespace and any resource;
	// XID is the parsed id then.
	Ours bool
	XID  XID

	// Database is the database the transaction belongs to when the
	// server says (PostgreSQL); "" when it does not (MySQL and MariaDB:
	// XA RECOVER lists the whole server without saying).
	Database string

	// SameDatabase reports whether the transaction belongs to the
	// resource's own database: the server says so (PostgreSQL), or the
	// database tag in a threepc id says so (MySQL, MariaDB). It is false
	// for a MySQL or MariaDB transaction of other software, whose
	// database nobody can tell.
	SameDatabase bool

	// PreparedAt is when the server prepared the transaction, when it
	// records that (PostgreSQL's prepared column); zero otherwise. MySQL
	// and MariaDB's XA RECOVER gives no time: XID.Time, the creation time
	// in a threepc id, is the only age there, and other software's
	// transactions have none.
	PreparedAt time.Time

	// Owner is the database user that prepared the transaction, when
	// the server says (PostgreSQL).
	Owner string
}
