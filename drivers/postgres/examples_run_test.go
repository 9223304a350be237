package postgres_test

import (
	"testing"

	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/internal/examplerun"
)

// TestExamplesRun runs Example, which needs a server (it has no Output
// comment, so go test only compiles it), on a fresh database with the
// accounts table it writes to, whose URL it puts in the environment.
func TestExamplesRun(t *testing.T) {
	url, db := examplerun.Database(t, harness.Postgres, false,
		"CREATE TABLE accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)",
		"INSERT INTO accounts (id, balance) VALUES (7, 1000)")
	t.Setenv("ORDERS_URL", url)
	examplerun.Check(t, Example, "debited account 7")
	if got := examplerun.QueryInt(t, db, "SELECT balance FROM accounts WHERE id = 7"); got != 900 {
		t.Errorf("account 7 has %d, want 900", got)
	}
}
