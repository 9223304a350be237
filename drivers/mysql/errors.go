package mysql

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"syscall"

	mysqldriver "github.com/go-sql-driver/mysql"

	"github.com/threepc/threepc/resource"
)

// MySQL and MariaDB error numbers the driver maps.
const (
	erServerShutdown   = 1053 // ER_SERVER_SHUTDOWN
	erUnknownThread    = 1094 // ER_NO_SUCH_THREAD
	erDupEntry         = 1062 // ER_DUP_ENTRY
	erNoSuchTable      = 1146 // ER_NO_SUCH_TABLE
	erDBAccessDenied   = 1044 // ER_DBACCESS_DENIED_ERROR
	erBadField         = 1054 // ER_BAD_FIELD_ERROR
	erParse            = 1064 // ER_PARSE_ERROR
	erAccessDenied     = 1227 // ER_SPECIFIC_ACCESS_DENIED_ERROR
	erXAERNota         = 1397 // XAER_NOTA: unknown XID
	erXAERRmfail       = 1399 // XAER_RMFAIL: wrong XA state for the command
	erXAERDupID        = 1440 // XAER_DUPID
	erXARBRollback     = 1402 // XA_RBROLLBACK
	erXARBTimeout      = 1613 // XA_RBTIMEOUT
	erXARBDeadlock     = 1614 // XA_RBDEADLOCK
	erConnectionKilled = 1927 // ER_CONNECTION_KILLED (MariaDB)
	erAccessDeniedUser = 1045 // ER_ACCESS_DENIED_ERROR: wrong user or password
	erBadDB            = 1049 // ER_BAD_DB_ERROR: unknown database
	erUnknownSysVar    = 1193 // ER_UNKNOWN_SYSTEM_VARIABLE: a DSN parameter the server does not know
	erAccessDeniedNoPw = 1698 // ER_ACCESS_DENIED_NO_PASSWORD_ERROR (unix_socket/auth plugin refusal)
	crServerGone       = 2006 // CR_SERVER_GONE_ERROR
	crServerLost       = 2013 // CR_SERVER_LOST
)

// mysqlErrno returns the server error number in err's chain, or 0.
func mysqlErrno(err error) uint16 {
	var me *mysqldriver.MySQLError
	if errors.As(err, &me) {
		return me.Number
	}
	return 0
}

// serverError carries the error number of the *mysql.MySQLError in its
// chain as tracing's status code (tracing.StatusCoder), which
// go-sql-driver's error type exposes as a field only. Its message is the
// wrapped error's. Unwrap returns the one wrapped error in a slice, as
// errors.Join does: errors.Is and errors.As see through it either way,
// and tracing.ErrorTypeOf, which names the first error that is not a mere
// wrapper, still names the server's error rather than this one.
type serverError struct {
	err    error
	number uint16
}

func (e *serverError) Error() string   { return e.err.Error() }
func (e *serverError) Unwrap() []error { return []error{e.err} }

// DBStatusCode is the MySQL error number, e.g. "1062"
// (db.response.status_code).
func (e *serverError) DBStatusCode() string { return strconv.Itoa(int(e.number)) }

// withStatus wraps err in a serverError when its chain holds a server
// error and no status code yet; other errors are returned as they are.
func withStatus(err error) error {
	n := mysqlErrno(err)
	if n == 0 {
		return err
	}
	var se *serverError
	if errors.As(err, &se) {
		return err
	}
	return &serverError{err: err, number: n}
}

// rejected reports whether err is the server turning a connection down
// (resource.ErrConnectionRejected): wrong user or password, no access to
// the database, an unknown database, or a DSN parameter that go-sql-driver
// sends as a session variable and the server does not know (?foo=bar).
// The server gives these answers while the pool opens a connection; the
// driver's own statements never cause them.
func rejected(err error) bool {
	switch mysqlErrno(err) {
	case erDBAccessDenied, erAccessDeniedUser, erAccessDeniedNoPw, erBadDB, erUnknownSysVar:
		return true
	}
	return false
}

// isConnError reports whether err means the connection or server failed, so
// that the outcome of the statement in flight is unknown.
func isConnError(err error) bool {
	if err == nil {
		return false
	}
	switch mysqlErrno(err) {
	case erServerShutdown, erConnectionKilled, crServerGone, crServerLost:
		return true
	}
	if errors.Is(err, driver.ErrBadConn) || errors.Is(err, mysqldriver.ErrInvalidConn) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne)
}

// isCtxError reports whether err is the cancellation or deadline of a
// context. go-sql-driver closes the connection when a statement's context
// ends, so the statement's outcome is then unknown too.
func isCtxError(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// wrap returns err with the package prefix, what was being done, and the
// sentinel (if any) that the error maps to. The original error stays in
// the chain, with its error number as the status code (serverError).
func wrap(what string, sentinel, err error) error {
	err = withStatus(err)
	if sentinel == nil {
		return fmt.Errorf("threepc/mysql: %s: %w", what, err)
	}
	return fmt.Errorf("threepc/mysql: %s: %w: %w", what, sentinel, err)
}

// wrapConn wraps err, mapping broken connections to ErrUnreachable and
// refused ones to ErrConnectionRejected.
func wrapConn(what string, err error) error {
	if rejected(err) {
		return wrap(what, resource.ErrConnectionRejected, err)
	}
	if isConnError(err) {
		return wrap(what, resource.ErrUnreachable, err)
	}
	return wrap(what, nil, err)
}

// isRollbackOnly reports whether err says the server rolled the branch
// back on its own (the branch can only be rolled back now).
func isRollbackOnly(err error) bool {
	switch mysqlErrno(err) {
	case erXARBRollback, erXARBTimeout, erXARBDeadlock:
		return true
	}
	return false
}

// heuristic returns the error for a branch decided to commit that is gone
// without its evidence row. byIDOK says that the server answered OK to a
// by-id XA COMMIT: the hand-over race's orphan (MariaDB) is then the
// likely cause.
func heuristic(what string, byIDOK bool, cause error) error {
	msg := "the branch is not prepared any more and its evidence row is missing: it was rolled back outside threepc, or lost by the server " +
		"(MariaDB's hand-over race leaves it prepared but unlisted until a restart: restart the MariaDB server, then run recovery)"
	if byIDOK {
		msg = "the server answered OK to XA COMMIT by id, but the branch's evidence row is missing: the server may have committed nothing " +
			"(MariaDB's hand-over race leaves the branch prepared but unlisted until a restart): restart the MariaDB server, then run recovery"
	}
	if cause != nil {
		return fmt.Errorf("threepc/mysql: %s: %w: %s: %w", what, resource.ErrHeuristic, msg, withStatus(cause))
	}
	return fmt.Errorf("threepc/mysql: %s: %w: %s", what, resource.ErrHeuristic, msg)
}
