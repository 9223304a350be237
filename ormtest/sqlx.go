package ormtest

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"strings"

	"github.com/jmoiron/sqlx"
	"github.com/jmoiron/sqlx/reflectx"

	"github.com/threepc/threepc/resource"
)

// SQLXBranch lets sqlx's functions (sqlx.GetContext, SelectContext,
// NamedExecContext...) run on a branch handle: it implements
// sqlx.ExtContext and sqlx.PreparerContext over resource.DBTX.
//
// sqlx.NewDb needs a *sql.DB and would run outside the branch; there is
// no *sql.Tx or *sql.Conn to give sqlx either. Rows wrap as they are, but
// *sqlx.Row has no exported constructor, so QueryRowxContext prepares its
// statement on the branch and the row comes from that statement: one more
// round trip on PostgreSQL, and the statements stay open until Close,
// which must run before the function given to txmanager.Manager.Run
// returns (defer it there).
type SQLXBranch struct {
	resource.DBTX
	driverName string
	stmts      []*sqlx.Stmt
}

var (
	_ sqlx.ExtContext      = (*SQLXBranch)(nil)
	_ sqlx.PreparerContext = (*SQLXBranch)(nil)
)

// SQLX wraps a branch handle; driverName is the database/sql driver name
// sqlx chooses its placeholders by: "pgx" for PostgreSQL, "mysql" for
// MariaDB and MySQL.
func SQLX(h resource.DBTX, driverName string) *SQLXBranch {
	return &SQLXBranch{DBTX: h, driverName: driverName}
}

// sqlx's default mapper (sqlx.NameMapper, the "db" tag).
var mapper = reflectx.NewMapperFunc("db", strings.ToLower)

// DriverName is the driver name given to SQLX.
func (b *SQLXBranch) DriverName() string { return b.driverName }

// Rebind turns ? placeholders into the driver's.
func (b *SQLXBranch) Rebind(query string) string {
	return sqlx.Rebind(sqlx.BindType(b.driverName), query)
}

// BindNamed binds :name parameters from arg.
func (b *SQLXBranch) BindNamed(query string, arg any) (string, []any, error) {
	return sqlx.BindNamed(sqlx.BindType(b.driverName), query, arg)
}

// QueryxContext runs a query on the branch.
func (b *SQLXBranch) QueryxContext(ctx context.Context, query string, args ...any) (*sqlx.Rows, error) {
	rows, err := b.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	return &sqlx.Rows{Rows: rows, Mapper: mapper}, nil
}

// QueryRowxContext runs a query for one row on the branch, through a
// statement prepared on it (see SQLXBranch).
func (b *SQLXBranch) QueryRowxContext(ctx context.Context, query string, args ...any) *sqlx.Row {
	st, err := sqlx.PreparexContext(ctx, b.DBTX, query)
	if err != nil {
		return errorRow(err)
	}
	b.stmts = append(b.stmts, st)
	return st.QueryRowxContext(ctx, args...)
}

// Close closes the statements QueryRowxContext prepared.
func (b *SQLXBranch) Close() error {
	var errs []error
	for _, st := range b.stmts {
		errs = append(errs, st.Close())
	}
	b.stmts = nil
	return errors.Join(errs...)
}

// errorRow returns a *sqlx.Row whose Scan returns err, from a throwaway
// pool whose connector fails with it: sqlx has no other way to make one.
func errorRow(err error) *sqlx.Row {
	db := sqlx.NewDb(sql.OpenDB(failingConnector{err}), "")
	defer db.Close()
	return db.QueryRowxContext(context.Background(), "")
}

type failingConnector struct{ err error }

func (c failingConnector) Connect(context.Context) (driver.Conn, error) { return nil, c.err }
func (c failingConnector) Driver() driver.Driver                        { return failingDriver(c) }

type failingDriver struct{ err error }

func (d failingDriver) Open(string) (driver.Conn, error) { return nil, d.err }
