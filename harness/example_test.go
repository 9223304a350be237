package harness_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"testing"
	"time"

	"github.com/threepc/threepc/harness"
)

// Tests share one server per kind and test binary, each in a database of
// its own. Shared skips the test when the server binaries are missing
// (and fails it under CI=true), or uses THREEPC_TEST_POSTGRES /
// THREEPC_TEST_MYSQL; the package's TestMain must call harness.Main,
// which stops the servers.
func ExampleShared() {
	testTransfer := func(t *testing.T) {
		pg := harness.Shared(t, harness.Postgres)
		my := harness.Shared(t, harness.MariaDB)
		pgURL := pg.URL(pg.NewDatabase(t)) // postgres://postgres@127.0.0.1:PORT/t_...
		myDSN := my.DSN(my.NewDatabase(t)) // root@tcp(127.0.0.1:PORT)/t_...
		t.Log(pgURL, myDSN)
	}
	_ = testTransfer
}

// A test that crashes its server starts one of its own, and kills and
// restarts it: committed and prepared transactions survive.
func ExampleOwn() {
	testCrash := func(t *testing.T) {
		srv := harness.Own(t, harness.MariaDB, harness.Options{}) // skips if THREEPC_TEST_MYSQL names a server
		ctx := context.Background()
		if err := srv.Kill(); err != nil {
			t.Fatal(err)
		}
		if err := srv.Restart(ctx); err != nil {
			t.Fatal(err)
		}
	}
	_ = testCrash
}

// Start, outside tests: a throwaway server in a temporary directory on a
// free loopback port, removed by Close.
func ExampleStart() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := harness.Start(ctx, harness.Postgres, harness.Options{
		Settings: map[string]string{"max_prepared_transactions": "200"},
	})
	if err != nil {
		log.Fatal(err) // harness.ErrBinariesMissing: install postgresql
	}
	defer srv.Close()
	if err := srv.CreateDatabase(ctx, "app"); err != nil {
		log.Fatal(err)
	}
	db, err := sql.Open("pgx", srv.DSN("app"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	fmt.Println(srv.URL("app"))
}
