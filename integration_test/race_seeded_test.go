//go:build threepc_seeded

package integration_test

import (
	"testing"
	"time"

	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/internal/seeded"
	"github.com/threepc/threepc/txmanager"
)

// TestRaceSeededBugsAreCaught plants the protocol bugs of package seeded
// in the recovery scanner and shows that the paused-coordinator race
// then breaks an invariant: the race tests above have the power to fail.
func TestRaceSeededBugsAreCaught(t *testing.T) {
	pg := harness.Shared(t, harness.Postgres)
	my := harness.Shared(t, harness.MariaDB)
	for _, bug := range []struct {
		name string
		flag *seeded.Switch
	}{
		{"abort-without-fence", &seeded.AbortWithoutFence},
		{"early-abort-cleanup", &seeded.EarlyAbortCleanup},
	} {
		t.Run(bug.name, func(t *testing.T) {
			ps := []part{newPart(t, pg, "seed_pg", crashTable), newPart(t, my, "seed_my", crashTable)}
			bug.flag.Store(true)
			defer bug.flag.Store(false)
			problems := racePaused(t, ps, openAll(t, ps), txmanager.ThreePC, txmanager.BeforeDecide)
			if len(problems) == 0 {
				t.Errorf("seeded bug %s went unnoticed", bug.name)
			}
			for _, p := range problems {
				t.Logf("caught, as expected: %s", p)
			}
			// Leave nothing behind for later tests.
			rs := openAll(t, ps)
			_, heuristic := recoverHeuristic(t, rs, 20*time.Second)
			repairHeuristic(t, rs, heuristic)
		})
	}
}
