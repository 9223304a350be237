package harness_test

import (
	"database/sql"
	"testing"

	"github.com/threepc/threepc/harness"
)

// testCrash is a test of the application's own, TestCrash in one of its
// _test.go files (here TestExamplesRun calls it).
func testCrash(t *testing.T) {
	srv := harness.Own(t, harness.MariaDB, harness.Options{}) // skips if THREEPC_TEST_MYSQL names a server
	ctx := t.Context()
	if err := srv.CreateDatabase(ctx, "app"); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("mysql", srv.DSN("app"))
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"CREATE TABLE t (id INT PRIMARY KEY)", "INSERT INTO t VALUES (1)"} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()

	if err := srv.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	if err := srv.Restart(ctx); err != nil { // same data directory, same port
		t.Fatal(err)
	}

	db, err = sql.Open("mysql", srv.DSN("app"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRowContext(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil || n != 1 {
		t.Fatalf("after the crash: %d rows (%v), want the committed one", n, err)
	}
}

// testCrash needs servers, so no Output comment: TestExamplesRun runs it.

// A test that crashes its server starts one of its own, and kills and
// restarts it: committed and prepared transactions survive.
func ExampleOwn() {
	_ = testCrash // a test: go test runs it with its *testing.T
}
