package ormtest_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"entgo.io/ent/dialect"
	entsql "entgo.io/ent/dialect/sql"

	"github.com/threepc/threepc/ormtest"
	entdb "github.com/threepc/threepc/ormtest/ent"
	entaccount "github.com/threepc/threepc/ormtest/ent/account"
	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

func entDialect(r resource.Resource) string {
	if isPG(r) {
		return dialect.Postgres
	}
	return dialect.MySQL
}

// entClient is an ent client on a branch handle, through the adapter.
func entClient(r resource.Resource, h resource.DBTX) *entdb.Client {
	return entdb.NewClient(entdb.Driver(ormtest.EntDriver(entDialect(r), h)))
}

func TestEnt(t *testing.T) {
	e := newEnv(t)
	w := func(ctx context.Context, r resource.Resource, h resource.DBTX) error {
		return entWork(ctx, entClient(r, h))
	}
	t.Run("commit", func(t *testing.T) { e.commit(t, w) })
	t.Run("rollback", func(t *testing.T) { e.rollback(t, w) })

	// client.Tx on the adapter gives a transaction that is the branch:
	// its Commit commits nothing, and the distributed rollback undoes
	// what it "committed".
	t.Run("Tx", func(t *testing.T) {
		before := e.snapshot(t)
		err := e.m.Run(testCtx(t), func(ctx context.Context, tx *txmanager.Tx) error {
			for _, r := range e.both() {
				etx, err := entClient(r, tx.DB(r.Name())).Tx(ctx)
				if err != nil {
					return err
				}
				if _, err := etx.Account.Create().SetOwner("carol").SetBalance(1).Save(ctx); err != nil {
					return errors.Join(err, etx.Rollback())
				}
				if err := etx.Commit(); err != nil {
					return err
				}
			}
			return errBoom
		})
		if !errors.Is(err, errBoom) {
			t.Fatalf("Run: %v, want errBoom", err)
		}
		e.assertUnchanged(t, before)
	})

	// ent's own driver on a handle runs creates and queries, but panics
	// in Tx (it asserts a *sql.DB), which ent calls for every UpdateOne.
	// Run rolls both branches back and re-panics.
	t.Run("entsqlDriver", func(t *testing.T) {
		before := e.snapshot(t)
		var created bool
		panicked := catch(func() {
			_ = e.m.Run(testCtx(t), func(ctx context.Context, tx *txmanager.Tx) error {
				for _, r := range e.both() {
					drv := entsql.NewDriver(entDialect(r), entsql.Conn{ExecQuerier: tx.DB(r.Name())})
					c := entdb.NewClient(entdb.Driver(drv))
					a, err := c.Account.Create().SetOwner("dave").SetBalance(1).Save(ctx)
					if err != nil {
						return err
					}
					if _, err := c.Account.Get(ctx, a.ID); err != nil {
						return err
					}
					created = true
					if _, err := c.Account.UpdateOneID(a.ID).AddBalance(1).Save(ctx); err != nil {
						return err
					}
				}
				return nil
			})
		})
		if !created {
			t.Fatal("Create and Get failed")
		}
		if !strings.Contains(fmt.Sprint(panicked), "interface conversion") {
			t.Fatalf("UpdateOne through entsql.NewDriver: panic %v, want ent's *sql.DB assertion", panicked)
		}
		e.assertUnchanged(t, before)
	})

	// client.Tx through ent's own driver panics the same way.
	t.Run("entsqlDriverTx", func(t *testing.T) {
		before := e.snapshot(t)
		panicked := catch(func() {
			_ = e.m.Run(testCtx(t), func(ctx context.Context, tx *txmanager.Tx) error {
				drv := entsql.NewDriver(entDialect(e.pg), entsql.Conn{ExecQuerier: tx.DB(e.pg.Name())})
				_, err := entdb.NewClient(entdb.Driver(drv)).Tx(ctx)
				return err
			})
		})
		if !strings.Contains(fmt.Sprint(panicked), "interface conversion") {
			t.Fatalf("client.Tx through entsql.NewDriver: panic %v, want ent's *sql.DB assertion", panicked)
		}
		e.assertUnchanged(t, before)
	})

	// ent's session variables (entsql.WithVar) run their SET on a
	// connection ent takes from a *sql.DB or *sql.Tx; for any other
	// ExecQuerier, the adapter's too, ent calls a nil one.
	t.Run("WithVar", func(t *testing.T) {
		before := e.snapshot(t)
		panicked := catch(func() {
			_ = e.m.Run(testCtx(t), func(ctx context.Context, tx *txmanager.Tx) error {
				c := entClient(e.pg, tx.DB(e.pg.Name()))
				_, err := c.Account.Query().All(entsql.WithVar(ctx, "search_path", "public"))
				return err
			})
		})
		if !strings.Contains(fmt.Sprint(panicked), "nil pointer") {
			t.Fatalf("query with entsql.WithVar: panic %v, want a nil pointer dereference", panicked)
		}
		e.assertUnchanged(t, before)
	})
}

// catch runs f and returns what it panicked with.
func catch(f func()) (p any) {
	defer func() { p = recover() }()
	f()
	return nil
}

func entWork(ctx context.Context, c *entdb.Client) error {
	alice, err := c.Account.Create().SetOwner("alice").SetBalance(100).Save(ctx)
	if err != nil {
		return err
	}
	if _, err := c.Account.Create().SetOwner("bob").SetBalance(0).Save(ctx); err != nil {
		return err
	}
	got, err := c.Account.Get(ctx, alice.ID)
	if err != nil {
		return err
	}
	if err := checkRead("Get", account{got.Owner, got.Balance}, account{"alice", 100}); err != nil {
		return err
	}
	// UpdateOne begins an ent transaction by itself: the adapter's.
	if _, err := c.Account.UpdateOneID(alice.ID).AddBalance(25).Save(ctx); err != nil {
		return err
	}
	all, err := c.Account.Query().Order(entaccount.ByID()).All(ctx)
	if err != nil {
		return err
	}
	list := make([]account, len(all))
	for i, a := range all {
		list[i] = account{a.Owner, a.Balance}
	}
	return checkList(list)
}
