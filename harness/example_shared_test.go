package harness_test

import (
	"database/sql"
	"testing"

	"github.com/threepc/threepc/harness"
)

// testTransfer is a test of the application's own, TestTransfer in one of
// its _test.go files, next to
//
//	func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }
//
// (here TestExamplesRun calls it, and harness's own TestMain stops the
// servers).
func testTransfer(t *testing.T) {
	pg := harness.Shared(t, harness.Postgres)
	my := harness.Shared(t, harness.MariaDB)
	pgURL := pg.URL(pg.NewDatabase(t)) // postgres://postgres@127.0.0.1:PORT/t_...
	myDSN := my.DSN(my.NewDatabase(t)) // root@tcp(127.0.0.1:PORT)/t_...
	orders, err := sql.Open("pgx", pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer orders.Close()
	billing, err := sql.Open("mysql", myDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer billing.Close()
	for _, db := range []*sql.DB{orders, billing} {
		if _, err := db.ExecContext(t.Context(), "CREATE TABLE accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)"); err != nil {
			t.Fatal(err)
		}
	}
	t.Log(pgURL, myDSN)
}

// testTransfer needs servers, so no Output comment: TestExamplesRun runs it.

// Tests share one server per kind and test binary, each in a database of
// its own. Shared skips the test when the server binaries are missing
// (and fails it under CI=true), or uses THREEPC_TEST_POSTGRES /
// THREEPC_TEST_MYSQL; the package's TestMain must call harness.Main,
// which stops the servers.
func ExampleShared() {
	_ = testTransfer // a test: go test runs it with its *testing.T
}
