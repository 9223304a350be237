//go:build threepc_seeded

package integration_test

import (
	"testing"
	"time"

	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/internal/seeded"
)

// TestDecisionRowSeededDeletionIsCaught plants seeded.DeleteDecisionRow
// (the coordinator's clean-up and recovery delete the primary's decision
// row instead of keeping a tombstone: the code before issue 10) and
// asserts that every script of TestDecisionRowOutlivesStaleActors then
// finds a broken promise.
func TestDecisionRowSeededDeletionIsCaught(t *testing.T) {
	pg := harness.Shared(t, harness.Postgres)
	my := harness.Shared(t, harness.MariaDB)
	ps := []part{newPart(t, pg, "drs_pg", crashTable), newPart(t, my, "drs_my", crashTable)}
	for _, c := range staleCases() {
		t.Run(c.name, func(t *testing.T) {
			seeded.DeleteDecisionRow.Store(true)
			problems := c.script(t, ps, c.protocol, c.llr, "drs-"+c.name)
			seeded.DeleteDecisionRow.Store(false)
			if len(problems) == 0 {
				t.Errorf("seeded bug DeleteDecisionRow went unnoticed")
			}
			for _, p := range problems {
				t.Logf("caught, as expected: %s", p)
			}
		})
	}
	// The planted bug leaves abort rows beside committed data; collect
	// them so that nothing is left for later tests.
	rs := openAll(t, ps)
	recoverFresh(t, rs, 20*time.Second)
	collectAborts(t, rs)
}
