package mysql_test

import (
	"testing"

	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/internal/examplerun"
)

// TestExamplesRun runs Example, which needs a server (it has no Output
// comment, so go test only compiles it), on a fresh database with the
// accounts table it writes to, whose URL it puts in the environment.
func TestExamplesRun(t *testing.T) {
	url, db := examplerun.Database(t, harness.MariaDB, false,
		"CREATE TABLE accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)",
		"INSERT INTO accounts (id, balance) VALUES (42, 1000)")
	t.Setenv("BILLING_URL", url)
	examplerun.Check(t, Example, "credited account 42")
	if got := examplerun.QueryInt(t, db, "SELECT balance FROM accounts WHERE id = 42"); got != 1100 {
		t.Errorf("account 42 has %d, want 1100", got)
	}
}
