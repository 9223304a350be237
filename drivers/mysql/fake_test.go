package mysql

import (
	"context"
	"database/sql/driver"
	"errors"
)

// fakeConnector is a database/sql connector of another driver, for the
// check that New accepts go-sql-driver pools only.
type fakeConnector struct{}

func (fakeConnector) Connect(context.Context) (driver.Conn, error) {
	return nil, errors.New("fake: no connections")
}
func (fakeConnector) Driver() driver.Driver { return fakeDriver{} }

type fakeDriver struct{}

func (fakeDriver) Open(string) (driver.Conn, error) { return nil, errors.New("fake: no connections") }
