package migrations_test

import (
	"testing"

	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/internal/examplerun"
)

// TestExamplesRun runs ExampleUp, which needs a server (it has no Output
// comment, so go test only compiles it), on a fresh database whose URL it
// puts in the environment: twice, as at two start-ups.
func TestExamplesRun(t *testing.T) {
	url, _ := examplerun.Database(t, harness.Postgres, false)
	t.Setenv("ORDERS_URL", url)
	examplerun.Check(t, ExampleUp, "threepc schema version 2")
	examplerun.Check(t, ExampleUp, "threepc schema version 2") // does nothing the second time
}
