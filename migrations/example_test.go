package migrations_test

import (
	"context"
	"database/sql"
	"fmt"
	"io/fs"
	"log"
	"os"

	"github.com/threepc/threepc/migrations"
)

// Needs a server, so no Output comment: TestExamplesRun runs it.

// Up at every start-up: it creates the marker table the first time and
// does nothing after that.
func ExampleUp() {
	ctx := context.Background()
	db, err := sql.Open("pgx", os.Getenv("ORDERS_URL")) // postgres://app@127.0.0.1:5432/orders
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	if err := migrations.Up(ctx, db, migrations.DialectPostgres); err != nil {
		log.Fatal(err)
	}
	v, dirty, err := migrations.Version(ctx, db, migrations.DialectPostgres)
	if err != nil || dirty {
		log.Fatalf("version %d, dirty %v: %v", v, dirty, err)
	}
	fmt.Println("threepc schema version", v)
}

// FS hands the embedded files to another migration tool.
func ExampleFS() {
	files, err := migrations.FS(migrations.DialectMySQL)
	if err != nil {
		log.Fatal(err)
	}
	ups, err := fs.Glob(files, "*.up.sql")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ups)
	// Output: [1_markers.up.sql 2_evidence.up.sql]
}
