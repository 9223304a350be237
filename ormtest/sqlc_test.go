package ormtest_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/threepc/threepc/ormtest/sqlc/mydb"
	"github.com/threepc/threepc/ormtest/sqlc/pgdb"
	"github.com/threepc/threepc/resource"
)

// A branch handle is sqlc's DBTX as it is.
var (
	_ pgdb.DBTX = resource.DBTX(nil)
	_ mydb.DBTX = resource.DBTX(nil)
)

// TestSQLC runs sqlc's generated code (database/sql mode) on the
// handles: pgdb.New(h) as generated, and on MariaDB mydb.Prepare(ctx, h),
// which prepares every query on the branch first (the handle's
// PrepareContext).
func TestSQLC(t *testing.T) {
	e := newEnv(t)
	w := func(ctx context.Context, r resource.Resource, h resource.DBTX) error {
		if isPG(r) {
			return sqlcPG(ctx, pgdb.New(h))
		}
		q, err := mydb.Prepare(ctx, h)
		if err != nil {
			return err
		}
		// The statements live on the branch's connection: close them
		// before the function returns.
		return errors.Join(sqlcMaria(ctx, q), q.Close())
	}
	t.Run("commit", func(t *testing.T) { e.commit(t, w) })
	t.Run("rollback", func(t *testing.T) { e.rollback(t, w) })
}

func sqlcPG(ctx context.Context, q *pgdb.Queries) error {
	alice, err := q.CreateAccount(ctx, pgdb.CreateAccountParams{Owner: "alice", Balance: 100})
	if err != nil {
		return err
	}
	if _, err := q.CreateAccount(ctx, pgdb.CreateAccountParams{Owner: "bob"}); err != nil {
		return err
	}
	got, err := q.GetAccount(ctx, alice.ID)
	if err != nil {
		return err
	}
	if err := checkRead("GetAccount", account{got.Owner, got.Balance}, account{"alice", 100}); err != nil {
		return err
	}
	n, err := q.AddBalance(ctx, pgdb.AddBalanceParams{Amount: 25, ID: alice.ID})
	if err != nil {
		return err
	}
	if n != 1 {
		return fmt.Errorf("AddBalance changed %d rows, want 1", n)
	}
	all, err := q.ListAccounts(ctx)
	if err != nil {
		return err
	}
	list := make([]account, len(all))
	for i, a := range all {
		list[i] = account{a.Owner, a.Balance}
	}
	return checkList(list)
}

func sqlcMaria(ctx context.Context, q *mydb.Queries) error {
	id, err := q.CreateAccount(ctx, mydb.CreateAccountParams{Owner: "alice", Balance: 100})
	if err != nil {
		return err
	}
	if _, err := q.CreateAccount(ctx, mydb.CreateAccountParams{Owner: "bob"}); err != nil {
		return err
	}
	got, err := q.GetAccount(ctx, id)
	if err != nil {
		return err
	}
	if err := checkRead("GetAccount", account{got.Owner, got.Balance}, account{"alice", 100}); err != nil {
		return err
	}
	n, err := q.AddBalance(ctx, mydb.AddBalanceParams{Amount: 25, ID: id})
	if err != nil {
		return err
	}
	if n != 1 {
		return fmt.Errorf("AddBalance changed %d rows, want 1", n)
	}
	all, err := q.ListAccounts(ctx)
	if err != nil {
		return err
	}
	list := make([]account, len(all))
	for i, a := range all {
		list[i] = account{a.Owner, a.Balance}
	}
	return checkList(list)
}
