package ormtest

import (
	"context"
	"database/sql"
	"errors"

	"entgo.io/ent/dialect"
	entsql "entgo.io/ent/dialect/sql"

	"github.com/threepc/threepc/resource"
)

// EntDriver is an ent dialect.Driver on a branch handle, for
// ent.NewClient(ent.Driver(...)). name is dialect.Postgres or
// dialect.MySQL.
//
// ent's own driver, entsql.NewDriver(name, entsql.Conn{ExecQuerier: h}),
// runs creates and queries on the handle but panics wherever ent begins a
// transaction: its Tx asserts that the ExecQuerier is a *sql.DB. ent does
// that for client.Tx and also by itself, for every UpdateOne and for
// creates and updates of edges stored in other tables. Here Tx returns a
// transaction that is the branch itself: its statements are part of the
// distributed transaction, its Commit does nothing (the distributed commit
// decides) and its Rollback undoes nothing; to undo, return an error from
// the function given to txmanager.Manager.Run. ent's session variables
// (entsql.WithVar) do not work on a branch: ent runs them only on a
// *sql.DB or *sql.Tx, and calls a nil ExecQuerier otherwise.
func EntDriver(name string, h resource.DBTX) dialect.Driver {
	return entDriver{Conn: entsql.Conn{ExecQuerier: h}, name: name}
}

type entDriver struct {
	entsql.Conn
	name string
}

func (d entDriver) Dialect() string { return d.name }

func (d entDriver) Tx(context.Context) (dialect.Tx, error) { return dialect.NopTx(d), nil }

// errTxOptions: a branch's isolation level and access mode are set when it
// begins, not by ent.
var errTxOptions = errors.New("ormtest: transaction options are not supported on a branch of a distributed transaction")

// BeginTx is Tx for ent's client.BeginTx, which needs the method (and
// panics without it); it refuses options it cannot honour.
func (d entDriver) BeginTx(ctx context.Context, opts *sql.TxOptions) (dialect.Tx, error) {
	if opts != nil && *opts != (sql.TxOptions{}) {
		return nil, errTxOptions
	}
	return d.Tx(ctx)
}

// Close does nothing: the branch belongs to the distributed transaction.
func (d entDriver) Close() error { return nil }
