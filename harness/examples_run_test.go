package harness_test

import (
	"os"
	"testing"

	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/internal/examplerun"
)

// TestExamplesRun runs what the examples show that needs servers (none
// has an Output comment, so go test only compiles them): the application
// tests of ExampleShared and ExampleOwn with a *testing.T of their own,
// and ExampleStart, checking what it prints at its end.
func TestExamplesRun(t *testing.T) {
	t.Run("ExampleShared", testTransfer)
	t.Run("ExampleOwn", testCrash)
	t.Run("ExampleStart", func(t *testing.T) {
		// Start has no skip of its own: the example would log.Fatal.
		if err := harness.BinariesMissing(harness.Postgres); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatal(err)
			}
			t.Skip(err)
		}
		examplerun.Check(t, ExampleStart, "max_prepared_transactions = 200")
	})
}
