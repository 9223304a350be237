package ormtest_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/mysqldialect"
	"github.com/uptrace/bun/dialect/pgdialect"

	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

// bunAccount is bun's model of accounts.
type bunAccount struct {
	bun.BaseModel `bun:"table:accounts"`

	ID      int64 `bun:",pk,autoincrement"`
	Owner   string
	Balance int64
}

// openBun opens bun on each resource's pool; a distributed transaction's
// queries take the branch handle with .Conn(h) (a handle is a bun.IConn).
func openBun(e *env) map[string]*bun.DB {
	dbs := map[string]*bun.DB{}
	for _, r := range e.both() {
		if isPG(r) {
			dbs[r.Name()] = bun.NewDB(resource.DBOf(r), pgdialect.New())
		} else {
			dbs[r.Name()] = bun.NewDB(resource.DBOf(r), mysqldialect.New())
		}
	}
	return dbs
}

func TestBun(t *testing.T) {
	e := newEnv(t)
	dbs := openBun(e)
	w := func(ctx context.Context, r resource.Resource, h resource.DBTX) error {
		db := dbs[r.Name()]
		alice := &bunAccount{Owner: "alice", Balance: 100}
		if _, err := db.NewInsert().Conn(h).Model(alice).Exec(ctx); err != nil {
			return err
		}
		if _, err := db.NewInsert().Conn(h).Model(&bunAccount{Owner: "bob"}).Exec(ctx); err != nil {
			return err
		}
		got := new(bunAccount)
		if err := db.NewSelect().Conn(h).Model(got).Where("id = ?", alice.ID).Scan(ctx); err != nil {
			return err
		}
		if err := checkRead("select", account{got.Owner, got.Balance}, account{"alice", 100}); err != nil {
			return err
		}
		if _, err := db.NewUpdate().Conn(h).Model(got).Set("balance = balance + ?", 25).WherePK().Exec(ctx); err != nil {
			return err
		}
		var all []bunAccount
		if err := db.NewSelect().Conn(h).Model(&all).Order("id").Scan(ctx); err != nil {
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

	// bun's RunInTx and BeginTx belong to *bun.DB, which is the pool: a
	// transaction begun there is a local one on another connection, and
	// commits on its own whatever the distributed transaction does. A
	// branch handle has no way to begin one, and needs none.
	t.Run("RunInTx", func(t *testing.T) {
		before := e.snapshot(t)
		db := dbs[e.pg.Name()]
		err := e.m.Run(testCtx(t), func(ctx context.Context, tx *txmanager.Tx) error {
			if _, err := db.NewInsert().Conn(tx.DB(e.pg.Name())).Model(&bunAccount{Owner: "in-branch"}).Exec(ctx); err != nil {
				return err
			}
			err := db.RunInTx(ctx, nil, func(ctx context.Context, local bun.Tx) error {
				_, err := local.NewInsert().Model(&bunAccount{Owner: "escaped"}).Exec(ctx)
				return err
			})
			if err != nil {
				return err
			}
			return errBoom
		})
		if !errors.Is(err, errBoom) {
			t.Fatalf("Run: %v, want errBoom", err)
		}
		got := accounts(t, e.pg)
		want := append(slices.Clone(before[e.pg.Name()]), account{"escaped", 0})
		if !slices.Equal(got, want) {
			t.Fatalf("pg after rollback: %+v, want %+v: RunInTx's local transaction commits on its own", got, want)
		}
		if _, err := db.NewDelete().Model((*bunAccount)(nil)).Where("owner = ?", "escaped").Exec(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		e.assertUnchanged(t, before)
	})
}

// A branch handle is a bun.IConn as it is.
var _ bun.IConn = resource.DBTX(nil)
