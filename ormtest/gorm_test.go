package ormtest_test

import (
	"context"
	"errors"
	"testing"

	gormmysql "gorm.io/driver/mysql"
	gormpg "gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

// gormAccount is GORM's model of accounts.
type gormAccount struct {
	ID      int64
	Owner   string
	Balance int64
}

func (gormAccount) TableName() string { return "accounts" }

// openGORM opens GORM on each resource's pool; the statements of a
// distributed transaction go to a session on the branch handle instead
// (onBranch).
func openGORM(t *testing.T, e *env) map[string]*gorm.DB {
	t.Helper()
	dbs := map[string]*gorm.DB{}
	for _, r := range e.both() {
		d := gormmysql.New(gormmysql.Config{Conn: resource.DBOf(r)})
		if isPG(r) {
			d = gormpg.New(gormpg.Config{Conn: resource.DBOf(r)})
		}
		db, err := gorm.Open(d, &gorm.Config{Logger: logger.Discard})
		if err != nil {
			t.Fatalf("gorm.Open %s: %v", r.Name(), err)
		}
		dbs[r.Name()] = db
	}
	return dbs
}

// onBranch returns a GORM session whose statements run on the branch
// handle h: a handle is a gorm.ConnPool as it is.
func onBranch(ctx context.Context, db *gorm.DB, h resource.DBTX) *gorm.DB {
	s := db.Session(&gorm.Session{NewDB: true, Context: ctx})
	s.Statement.ConnPool = h
	return s
}

// A branch handle is a gorm.ConnPool as it is.
var _ gorm.ConnPool = resource.DBTX(nil)

func TestGORM(t *testing.T) {
	e := newEnv(t)
	dbs := openGORM(t, e)
	w := func(ctx context.Context, r resource.Resource, h resource.DBTX) error {
		db := onBranch(ctx, dbs[r.Name()], h)
		alice := gormAccount{Owner: "alice", Balance: 100}
		if err := db.Create(&alice).Error; err != nil {
			return err
		}
		// Balance 0 is a zero value: Create still inserts it.
		if err := db.Create(&gormAccount{Owner: "bob"}).Error; err != nil {
			return err
		}
		var got gormAccount
		if err := db.First(&got, alice.ID).Error; err != nil {
			return err
		}
		if err := checkRead("First", account{got.Owner, got.Balance}, account{"alice", 100}); err != nil {
			return err
		}
		if err := db.Model(&got).Updates(map[string]any{"balance": gorm.Expr("balance + ?", 25)}).Error; err != nil {
			return err
		}
		var all []gormAccount
		if err := db.Order("id").Find(&all).Error; err != nil {
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

	// GORM's Begin and Transaction need a ConnPool that can begin; a
	// branch handle cannot, so both fail with ErrInvalidTransaction and
	// nothing runs. (Create's own default transaction is skipped silently
	// for the same reason, which is what a distributed transaction
	// wants.) Called on the pool's *gorm.DB instead, they would run a
	// local transaction outside the distributed one.
	t.Run("Transaction", func(t *testing.T) {
		before := e.snapshot(t)
		ran := false
		err := e.m.Run(testCtx(t), func(ctx context.Context, tx *txmanager.Tx) error {
			db := onBranch(ctx, dbs[e.pg.Name()], tx.DB(e.pg.Name()))
			if err := db.Begin().Error; !errors.Is(err, gorm.ErrInvalidTransaction) {
				t.Errorf("Begin on a branch session: %v, want gorm.ErrInvalidTransaction", err)
			}
			return db.Transaction(func(tx *gorm.DB) error {
				ran = true
				return tx.Create(&gormAccount{Owner: "carol"}).Error
			})
		})
		if !errors.Is(err, gorm.ErrInvalidTransaction) || !errors.Is(err, txmanager.ErrAborted) {
			t.Fatalf("Run: %v, want ErrAborted wrapping gorm.ErrInvalidTransaction", err)
		}
		if ran {
			t.Error("Transaction ran its function")
		}
		e.assertUnchanged(t, before)
	})
}
