package ormtest_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/jmoiron/sqlx"

	"github.com/threepc/threepc/ormtest"
	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

type sqlxAccount struct {
	ID      int64  `db:"id"`
	Owner   string `db:"owner"`
	Balance int64  `db:"balance"`
}

func sqlxDriverName(r resource.Resource) string {
	if isPG(r) {
		return "pgx"
	}
	return "mysql"
}

func TestSQLX(t *testing.T) {
	e := newEnv(t)
	w := func(ctx context.Context, r resource.Resource, h resource.DBTX) (err error) {
		x := ormtest.SQLX(h, sqlxDriverName(r))
		defer func() { err = errors.Join(err, x.Close()) }()
		for _, a := range []sqlxAccount{{Owner: "alice", Balance: 100}, {Owner: "bob"}} {
			if _, err := sqlx.NamedExecContext(ctx, x,
				"INSERT INTO accounts (owner, balance) VALUES (:owner, :balance)", a); err != nil {
				return err
			}
		}
		// Rebind turns ? into $1 on PostgreSQL.
		var alice sqlxAccount
		if err := sqlx.GetContext(ctx, x, &alice,
			x.Rebind("SELECT id, owner, balance FROM accounts WHERE owner = ? ORDER BY id DESC LIMIT 1"), "alice"); err != nil {
			return err
		}
		if err := checkRead("Get", account{alice.Owner, alice.Balance}, account{"alice", 100}); err != nil {
			return err
		}
		if _, err := sqlx.NamedExecContext(ctx, x,
			"UPDATE accounts SET balance = balance + :amount WHERE id = :id",
			map[string]any{"amount": 25, "id": alice.ID}); err != nil {
			return err
		}
		var all []sqlxAccount
		if err := sqlx.SelectContext(ctx, x, &all, "SELECT id, owner, balance FROM accounts ORDER BY id"); err != nil {
			return err
		}
		list := make([]account, len(all))
		for i, a := range all {
			list[i] = account{a.Owner, a.Balance}
		}
		return checkList(list)
	}
	t.Run("commit", func(t *testing.T) { e.commit(t, w) })
	t.Run("rollback", func(t *testing.T) { e.rollback(t, w) })

	// A failed Get reports the database's error through the adapter's
	// error row, and dooms the transaction.
	t.Run("GetError", func(t *testing.T) {
		before := e.snapshot(t)
		err := e.m.Run(testCtx(t), func(ctx context.Context, tx *txmanager.Tx) error {
			x := ormtest.SQLX(tx.DB(e.maria.Name()), "mysql")
			defer x.Close()
			var n int
			return sqlx.GetContext(ctx, x, &n, "SELECT balance FROM no_such_table")
		})
		if !errors.Is(err, txmanager.ErrAborted) {
			t.Fatalf("Run: %v, want ErrAborted", err)
		}
		var ae *txmanager.AbortError
		if !errors.As(err, &ae) || ae.Resource != e.maria.Name() {
			t.Fatalf("Run: %v, want an AbortError naming %s", err, e.maria.Name())
		}
		e.assertUnchanged(t, before)
	})

	// sqlx's Beginx/BeginTxx belong to *sqlx.DB, a pool: their transaction
	// is a local one on another connection and commits on its own. The
	// adapter has no Begin, and needs none.
	t.Run("BeginTxx", func(t *testing.T) {
		before := e.snapshot(t)
		pool := sqlx.NewDb(resource.DBOf(e.maria), "mysql")
		err := e.m.Run(testCtx(t), func(ctx context.Context, tx *txmanager.Tx) error {
			if _, err := tx.DB(e.maria.Name()).ExecContext(ctx,
				"INSERT INTO accounts (owner, balance) VALUES ('in-branch', 0)"); err != nil {
				return err
			}
			local, err := pool.BeginTxx(ctx, nil)
			if err != nil {
				return err
			}
			if _, err := local.ExecContext(ctx, "INSERT INTO accounts (owner, balance) VALUES ('escaped', 0)"); err != nil {
				_ = local.Rollback()
				return err
			}
			if err := local.Commit(); err != nil {
				return err
			}
			return errBoom
		})
		if !errors.Is(err, errBoom) {
			t.Fatalf("Run: %v, want errBoom", err)
		}
		got := accounts(t, e.maria)
		want := append(slices.Clone(before[e.maria.Name()]), account{"escaped", 0})
		if !slices.Equal(got, want) {
			t.Fatalf("maria after rollback: %+v, want %+v: BeginTxx's transaction commits on its own", got, want)
		}
		if _, err := pool.ExecContext(testCtx(t), "DELETE FROM accounts WHERE owner = 'escaped'"); err != nil {
			t.Fatal(err)
		}
		e.assertUnchanged(t, before)
	})
}
