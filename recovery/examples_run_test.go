package recovery_test

import (
	"os"
	"testing"

	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/internal/examplerun"
)

// TestMain stops the servers that TestExamplesRun starts (the other tests
// of this package need none).
func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }

// TestExamplesRun runs the examples that need servers (they have no
// Output comment, so go test only compiles them), each against fresh
// databases with threepc's markers, whose URLs it puts in the environment,
// and checks what they print at their end.
func TestExamplesRun(t *testing.T) {
	for _, ex := range []struct {
		name string
		fn   func()
		want string
	}{
		{"Example", Example, "start-up scan: 0 transactions, 0 in doubt"},
		{"ExampleScanner_ScanOnce", ExampleScanner_ScanOnce, "2 resources scanned, 0 transactions in doubt"},
		{"ExampleScanner_Run", ExampleScanner_Run, "background scans ended: context canceled"},
	} {
		t.Run(ex.name, func(t *testing.T) {
			ordersURL, _ := examplerun.Database(t, harness.Postgres, true)
			billingURL, _ := examplerun.Database(t, harness.MariaDB, true)
			t.Setenv("ORDERS_URL", ordersURL)
			t.Setenv("BILLING_URL", billingURL)
			examplerun.Check(t, ex.fn, ex.want)
		})
	}
}
