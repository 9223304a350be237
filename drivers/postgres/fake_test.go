package postgres

import (
	"database/sql/driver"
	"errors"
)

// fakeDriver is a database/sql driver that is not pgx; it never connects.
type fakeDriver struct{}

func (fakeDriver) Open(string) (driver.Conn, error) {
	return nil, errors.New("fake driver: no connections")
}
