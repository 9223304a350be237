package postgres

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/threepc/threepc/resource"
)

// errBranchNotActive is returned by a branch's query methods once the
// branch has been prepared or finished: the session is then outside any
// transaction, and a statement would silently autocommit outside the
// distributed transaction.
var errBranchNotActive = errors.New("threepc/postgres: branch is no longer active (prepared, committed, rolled back or closed): statements would run outside the transaction")

// SQLSTATEs that the driver maps to the resource package's sentinels.
const (
	codeUndefinedObject         = "42704" // no prepared transaction with that gid
	codeDuplicateObject         = "42710" // gid already in use
	codeObjectNotInState        = "55000" // prepared transaction busy, or prepared transactions disabled
	codeOutOfMemory             = "53200" // max_prepared_transactions reached
	codeFeatureNotSupported     = "0A000" // temp tables at PREPARE; wrong database at COMMIT PREPARED
	codeInsufficientPrivilege   = "42501" // not the preparing user nor a superuser
	codeUniqueViolation         = "23505"
	codeUndefinedTable          = "42P01"
	codeUndefinedColumn         = "42703" // the marker table predates migration 2 (no branch column)
	codeLockNotAvailable        = "55P03" // lock_timeout while inserting an evidence row
	codeSerializationFailure    = "40001"
	codeDeadlockDetected        = "40P01"
	codeAdminShutdown           = "57P01"
	codeCrashShutdown           = "57P02"
	codeCannotConnectNow        = "57P03"
	codeIdleSessionTimeout      = "57P05"
	codeConnectionExceptionCls  = "08"    // class 08: connection exception
	codeInvalidAuthorizationCls = "28"    // class 28: wrong password (28P01), no such role or no pg_hba entry (28000)
	codeInvalidCatalogName      = "3D000" // the database does not exist
	codeInvalidParameterValue   = "22023" // a bad value for a connection parameter
)

// op is the kind of statement whose error is mapped: the same SQLSTATE
// means different things at PREPARE and at COMMIT PREPARED.
type op int

const (
	opOther op = iota
	opPrepare
	opFinish // COMMIT PREPARED / ROLLBACK PREPARED
	opMarker
	// opEvidence: the evidence row a branch inserts right before PREPARE.
	opEvidence
)

// mapError wraps err with the resource sentinel its cause matches, keeping
// err in the chain, and prefixes it with what the driver was doing.
func mapError(o op, what string, err error) error {
	if err == nil {
		return nil
	}
	if rejected(err) {
		return fmt.Errorf("threepc/postgres: %s: %w: %w", what, resource.ErrConnectionRejected, err)
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		if s := sentinelFor(o, pgErr); s != nil {
			return fmt.Errorf("threepc/postgres: %s: %w: %w", what, s, err)
		}
		return fmt.Errorf("threepc/postgres: %s: %w", what, err)
	}
	if isConnError(err) {
		return fmt.Errorf("threepc/postgres: %s: %w: %w", what, resource.ErrUnreachable, err)
	}
	return fmt.Errorf("threepc/postgres: %s: %w", what, err)
}

func sentinelFor(o op, e *pgconn.PgError) error {
	switch e.Code {
	case codeUndefinedObject:
		if o == opFinish {
			return resource.ErrUnknownBranch
		}
	case codeDuplicateObject:
		if o == opPrepare {
			return resource.ErrBranchExists
		}
	case codeObjectNotInState:
		// The server says "prepared transactions are disabled" with this
		// code at PREPARE when max_prepared_transactions is 0, and
		// "prepared transaction with identifier ... is busy" at COMMIT or
		// ROLLBACK PREPARED.
		if o == opPrepare || strings.Contains(e.Message, "disabled") {
			return resource.ErrPreparedTransactionsDisabled
		}
		if o == opFinish {
			return resource.ErrBranchBusy
		}
	case codeOutOfMemory:
		if o == opPrepare {
			return resource.ErrTooManyPrepared
		}
	case codeFeatureNotSupported:
		if o == opFinish {
			// "prepared transaction belongs to another database": the
			// resource is configured on a different database than the one
			// that prepared the branch.
			return resource.ErrUnsupported
		}
	case codeInsufficientPrivilege:
		return resource.ErrMissingPrivilege
	case codeUndefinedTable, codeUndefinedColumn:
		if o == opMarker || o == opEvidence {
			return resource.ErrMarkerTableMissing
		}
	case codeUniqueViolation:
		switch o {
		case opMarker:
			return resource.ErrMarkerExists
		case opEvidence:
			// The evidence row of this branch id exists: the id was
			// used by a branch that committed.
			return resource.ErrBranchExists
		}
	case codeAdminShutdown, codeCrashShutdown, codeCannotConnectNow, codeIdleSessionTimeout:
		return resource.ErrUnreachable
	}
	if strings.HasPrefix(e.Code, codeConnectionExceptionCls) {
		return resource.ErrUnreachable
	}
	return nil
}

// rejected reports whether err is the server turning a connection down
// (resource.ErrConnectionRejected): authentication, a missing database,
// or, while connecting, an unknown or invalid run-time parameter of the
// URL ("unrecognized configuration parameter", 42704, at start-up). pgx
// wraps such an answer in a *pgconn.ConnectError, which isConnError would
// otherwise take for an unreachable server.
func rejected(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch {
	case strings.HasPrefix(pgErr.Code, codeInvalidAuthorizationCls), pgErr.Code == codeInvalidCatalogName:
		return true
	case pgErr.Code == codeUndefinedObject, pgErr.Code == codeInvalidParameterValue:
		var connectErr *pgconn.ConnectError
		return errors.As(err, &connectErr)
	}
	return false
}

// isConnError reports whether err means the connection broke or could not
// be made. A context error counts only when pgx says the statement was
// already sent (callers check ctx.Err() before sending): the connection is
// then closed by pgx and the statement's outcome is unknown.
func isConnError(err error) bool {
	if rejected(err) {
		// A server's answer to a new connection: nothing was in flight,
		// and retrying gives the same answer.
		return false
	}
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	switch {
	case errors.As(err, &connectErr),
		errors.Is(err, driver.ErrBadConn),
		errors.Is(err, sql.ErrConnDone),
		errors.Is(err, io.EOF),
		errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, net.ErrClosed),
		errors.As(err, &netErr):
		return true
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		// In flight when the context ended: pgx closed the connection.
		return !pgconn.SafeToRetry(err)
	case pgconn.SafeToRetry(err):
		return true
	}
	return strings.Contains(err.Error(), "conn closed")
}

// refusal reports whether err is a server's answer to PREPARE TRANSACTION
// (as opposed to a broken connection), in which case the server has rolled
// the transaction back.
func refusal(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	return !errors.Is(mapError(opPrepare, "", err), resource.ErrUnreachable)
}
