// Package sqlerr makes database/sql values that carry an error, for
// handles that must return a *sql.Row but failed before any query ran.
package sqlerr

import (
	"context"
	"database/sql"
	"database/sql/driver"
)

// Row returns a *sql.Row whose Scan and Err return err. database/sql has
// no public constructor for that, so the row comes from a throwaway pool
// whose connector fails with err.
func Row(err error) *sql.Row {
	db := sql.OpenDB(failingConnector{err})
	defer db.Close()
	return db.QueryRowContext(context.Background(), "")
}

type failingConnector struct{ err error }

func (c failingConnector) Connect(context.Context) (driver.Conn, error) { return nil, c.err }
func (c failingConnector) Driver() driver.Driver                        { return failingDriver(c) }

type failingDriver struct{ err error }

func (d failingDriver) Open(string) (driver.Conn, error) { return nil, d.err }
