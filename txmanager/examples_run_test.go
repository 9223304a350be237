package txmanager_test

import (
	"testing"

	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/internal/examplerun"
)

// The tables the examples use, each database with threepc's markers.
const (
	ordersSchema  = "CREATE TABLE accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)"
	ordersAccount = "INSERT INTO accounts (id, balance) VALUES (7, 1000)"
	ordersTable   = "CREATE TABLE orders (id BIGINT PRIMARY KEY)"
)

// TestExamplesRun runs the examples that need servers (they have no
// Output comment, so go test only compiles them), each against fresh
// databases whose URLs it puts in the environment, and checks what they
// print at their end and what they wrote.
func TestExamplesRun(t *testing.T) {
	t.Run("Example", func(t *testing.T) {
		ordersURL, orders := examplerun.Database(t, harness.Postgres, true, ordersSchema, ordersAccount)
		billingURL, billing := examplerun.Database(t, harness.MariaDB, true,
			"CREATE TABLE accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)",
			"INSERT INTO accounts (id, balance) VALUES (42, 1000)")
		t.Setenv("ORDERS_URL", ordersURL)
		t.Setenv("BILLING_URL", billingURL)
		examplerun.Check(t, Example, "committed in both")
		if got := examplerun.QueryInt(t, orders, "SELECT balance FROM accounts WHERE id = 7"); got != 900 {
			t.Errorf("orders: account 7 has %d, want 900", got)
		}
		if got := examplerun.QueryInt(t, billing, "SELECT balance FROM accounts WHERE id = 42"); got != 1100 {
			t.Errorf("billing: account 42 has %d, want 1100", got)
		}
	})
	t.Run("ExampleTx_DB_sqlc", func(t *testing.T) {
		ordersURL, _ := examplerun.Database(t, harness.Postgres, true, ordersSchema, ordersAccount)
		t.Setenv("ORDERS_URL", ordersURL)
		examplerun.Check(t, ExampleTx_DB_sqlc, "balance of account 7: 900")
	})
	t.Run("ExampleManager_Begin", func(t *testing.T) {
		ordersURL, orders := examplerun.Database(t, harness.Postgres, true, ordersTable)
		t.Setenv("ORDERS_URL", ordersURL)
		examplerun.Check(t, ExampleManager_Begin, "order 1 committed")
		if got := examplerun.QueryInt(t, orders, "SELECT count(*) FROM orders WHERE id = 1"); got != 1 {
			t.Errorf("orders: %d rows with id 1, want 1", got)
		}
	})
}
