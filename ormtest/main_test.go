package ormtest_test

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/threepc/threepc/drivers/mysql"
	"github.com/threepc/threepc/drivers/postgres"
	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/migrations"
	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

// The servers are started once for the package (harness.Shared) and
// closed by harness.Main; every test gets fresh databases.
func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }

// The accounts table, in each engine's SQL; sqlc generates from the same
// files.
var (
	//go:embed sqlc/postgres/schema.sql
	pgSchema string
	//go:embed sqlc/mysql/schema.sql
	mySchema string
)

// env is a PostgreSQL database "pg" and a MariaDB database "maria", each
// migrated and with an empty accounts table, and one Manager over both.
type env struct {
	pg, maria resource.Resource
	m         *txmanager.Manager
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := testCtx(t)
	pgSrv := harness.Shared(t, harness.Postgres)
	mdSrv := harness.Shared(t, harness.MariaDB)
	pg, err := postgres.Open("pg", pgSrv.DSN(pgSrv.NewDatabase(t)), postgres.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Close() })
	maria, err := mysql.Open("maria", mdSrv.DSN(mdSrv.NewDatabase(t)), mysql.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { maria.Close() })
	e := &env{pg: pg, maria: maria}
	for _, r := range e.both() {
		d, ddl := migrations.DialectMySQL, mySchema
		if r.System() == postgres.System {
			d, ddl = migrations.DialectPostgres, pgSchema
		}
		if err := migrations.Up(ctx, resource.DBOf(r), d); err != nil {
			t.Fatalf("migrations on %s: %v", r.Name(), err)
		}
		if _, err := resource.DBOf(r).ExecContext(ctx, ddl); err != nil {
			t.Fatalf("schema on %s: %v", r.Name(), err)
		}
		if err := r.Check(ctx); err != nil {
			t.Fatalf("Check %s: %v", r.Name(), err)
		}
	}
	e.m, err = txmanager.New(e.both())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.m.Close(context.Background()) })
	return e
}

func (e *env) both() []resource.Resource { return []resource.Resource{e.pg, e.maria} }

func testCtx(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// account is a row of accounts, without its id.
type account struct {
	Owner   string
	Balance int64
}

// accounts reads r's accounts in id order through the pool, outside any
// distributed transaction: what committed.
func accounts(t *testing.T, r resource.Resource) []account {
	t.Helper()
	rows, err := resource.DBOf(r).QueryContext(testCtx(t), "SELECT owner, balance FROM accounts ORDER BY id")
	if err != nil {
		t.Fatalf("%s: %v", r.Name(), err)
	}
	defer rows.Close()
	var out []account
	for rows.Next() {
		var a account
		if err := rows.Scan(&a.Owner, &a.Balance); err != nil {
			t.Fatalf("%s: %v", r.Name(), err)
		}
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", r.Name(), err)
	}
	return out
}

// work is one library's statements on one branch: open alice's account
// with 100 and bob's with 0, read alice's back by id, add 25 to it, and
// list the accounts, checking what it reads. It leaves workResult behind.
type work func(ctx context.Context, r resource.Resource, h resource.DBTX) error

// workResult is what work adds to an accounts table.
var workResult = []account{{"alice", 125}, {"bob", 0}}

// checkRead is work's check of a row read by id.
func checkRead(what string, got, want account) error {
	if got != want {
		return fmt.Errorf("%s: read %+v, want %+v", what, got, want)
	}
	return nil
}

// checkList is work's check of the listed accounts: they end with the two
// that work wrote (a rollback test runs work on a table that has them
// already).
func checkList(got []account) error {
	if len(got) < 2 || !slices.Equal(got[len(got)-2:], workResult) {
		return fmt.Errorf("listed %+v, want it to end with %+v", got, workResult)
	}
	return nil
}

var errBoom = errors.New("boom: the function fails after writing in both databases")

// commit runs w on both branches in one distributed transaction and checks
// that both took part and both committed.
func (e *env) commit(t *testing.T, w work) {
	t.Helper()
	before := e.snapshot(t)
	err := e.m.Run(testCtx(t), func(ctx context.Context, tx *txmanager.Tx) error {
		if err := e.runBoth(ctx, tx, w); err != nil {
			return err
		}
		if got := tx.Participants(); len(got) != 2 {
			return fmt.Errorf("participants %v, want both", got)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	for _, r := range e.both() {
		want := append(before[r.Name()], workResult...)
		if got := accounts(t, r); !slices.Equal(got, want) {
			t.Errorf("%s after commit: %+v, want %+v", r.Name(), got, want)
		}
	}
	e.assertClean(t)
}

// rollback runs w on both branches, then fails, and checks that neither
// database changed.
func (e *env) rollback(t *testing.T, w work) {
	t.Helper()
	before := e.snapshot(t)
	err := e.m.Run(testCtx(t), func(ctx context.Context, tx *txmanager.Tx) error {
		if err := e.runBoth(ctx, tx, w); err != nil {
			return err
		}
		return errBoom
	})
	if !errors.Is(err, txmanager.ErrAborted) || !errors.Is(err, errBoom) {
		t.Fatalf("Run: %v, want ErrAborted wrapping errBoom", err)
	}
	e.assertUnchanged(t, before)
}

func (e *env) runBoth(ctx context.Context, tx *txmanager.Tx, w work) error {
	for _, r := range e.both() {
		if err := w(ctx, r, tx.DB(r.Name())); err != nil {
			return fmt.Errorf("%s: %w", r.Name(), err)
		}
	}
	return nil
}

// snapshot is every database's accounts, by resource name.
func (e *env) snapshot(t *testing.T) map[string][]account {
	t.Helper()
	s := map[string][]account{}
	for _, r := range e.both() {
		s[r.Name()] = accounts(t, r)
	}
	return s
}

func (e *env) assertUnchanged(t *testing.T, before map[string][]account) {
	t.Helper()
	for _, r := range e.both() {
		if got := accounts(t, r); !slices.Equal(got, before[r.Name()]) {
			t.Errorf("%s after rollback: %+v, want it unchanged: %+v", r.Name(), got, before[r.Name()])
		}
	}
	e.assertClean(t)
}

// assertClean checks that no branch was left prepared.
func (e *env) assertClean(t *testing.T) {
	t.Helper()
	for _, r := range e.both() {
		prepared, err := r.Recover(testCtx(t))
		if err != nil {
			t.Fatalf("Recover %s: %v", r.Name(), err)
		}
		if len(prepared) > 0 {
			t.Errorf("%s: %d prepared branches left", r.Name(), len(prepared))
		}
	}
}

// isPG tells which engine's SQL a resource needs.
func isPG(r resource.Resource) bool { return r.System() == postgres.System }
