package harness_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"time"

	"github.com/threepc/threepc/harness"
)

// Needs the server binaries, so no Output comment: TestExamplesRun runs it.

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
	db, err := sql.Open("pgx", srv.DSN("app")) // postgres://postgres@127.0.0.1:PORT/app?sslmode=disable
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	var n string
	if err := db.QueryRowContext(ctx, "SHOW max_prepared_transactions").Scan(&n); err != nil {
		log.Fatal(err)
	}
	fmt.Println("max_prepared_transactions =", n)
}
