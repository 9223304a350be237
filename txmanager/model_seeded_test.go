//go:build threepc_seeded

package txmanager_test

import (
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/threepc/threepc/internal/seeded"
	"github.com/threepc/threepc/txmanager"
)

// TestModelSeededBugs proves the checker's power: each planted protocol
// bug must be caught by a bounded random search.
func TestModelSeededBugs(t *testing.T) {
	bugs := []struct {
		name   string
		flag   interface{ Store(bool) }
		budget uint64 // 0: the default budget
		// single pins single-row marker inserts: the bug's scenario
		// is rare, and the budget was found for that path (batching
		// changes the operation sequence, not recovery).
		single bool
	}{
		{"abort without fence", &seeded.AbortWithoutFence, 0, false},
		{"abort rows deleted before the coordinator's deadline", &seeded.EarlyAbortCleanup, 0, false},
		{"precommit rows before the primary's decision", &seeded.EarlyPreCommit, 0, false},
		// Needs a scan whose fence loses to a decision taken between its
		// listing and its fence, with a branch prepared in between: rarer.
		{"markers collected after a fence lost to a late decision", &seeded.CollectAfterLateDecision, 40000, true},
		{"an OK to a by-id commit taken for proof", &seeded.TrustByIDCommit, 0, false},
		{"a branch no longer prepared taken as committed", &seeded.AbsenceIsCommit, 0, false},
		{"the decision row deleted instead of tombstoned", &seeded.DeleteDecisionRow, 0, false},
		{"fences past their deadline", &seeded.FenceWithoutDeadline, 0, false},
	}
	const budget = 20000
	for _, bug := range bugs {
		t.Run(bug.name, func(t *testing.T) {
			bug.flag.Store(true)
			defer bug.flag.Store(false)
			// A scenario counts only if it is clean without the bug (the
			// same choices, drawn by label): the violation must be the
			// planted bug's.
			unattributable := 0
			budget := uint64(budget)
			if bug.budget > 0 {
				budget = bug.budget
			}
			for seed := uint64(0); seed < budget; seed++ {
				sc := scenario{faults: true, pauses: true, busy: seed%2 == 1}
				if bug.single {
					sc.batch = new(bool)
				}
				r := sc.run(newKeyedChooser(seed))
				if r.violation == "" {
					continue
				}
				bug.flag.Store(false)
				clean := sc.run(newKeyedChooser(seed))
				bug.flag.Store(true)
				if clean.violation != "" {
					unattributable++
					continue
				}
				t.Logf("caught after %d scenarios (%d steps; %d scenarios skipped, failing without the bug too): %s\n%s",
					seed+1, r.steps, unattributable, r.violation, r.scenarios)
				return
			}
			t.Fatalf("the checker never caught the planted bug %q in %d scenarios (%d failed without it too)", bug.name, budget, unattributable)
		})
	}
}

// TestModelSeededNonBlocking proves the non-blocking check's power: with
// the precommit rows and the commits overlapped for every branch, a plain
// crash in the exhaustive matrix leaves a committed branch beside a
// prepared one and no precommit row but the primary's.
func TestModelSeededNonBlocking(t *testing.T) {
	seeded.OverlapEveryBranch.Store(true)
	defer seeded.OverlapEveryBranch.Store(false)
	llr, off, commitFirst := true, false, true
	v := crashVariants[0] // a plain crash
	for _, fp := range txmanager.Failpoints() {
		for k := 1; k <= 3; k++ {
			sc := scenario{n: 3, protocol: txmanager.ThreePC, llr: &llr, async: &off, batch: &off, commitFirst: &commitFirst,
				faults: true, crashAt: fp, crashK: k, nonBlocking: true}
			if r := sc.run(crashScript(v, fp, k)); strings.Contains(r.violation, "3PC blocking") {
				t.Logf("caught at a crash at %s#%d: %s", fp, k, r.violation)
				return
			}
		}
	}
	t.Fatal("the non-blocking check never caught precommit rows overlapped with the commits of several branches")
}

// keyedChooser draws each choice from its label and how often the label
// was drawn before, so that two runs of a scenario that differ in one
// place (a planted bug) still make the same choices everywhere else.
type keyedChooser struct {
	seed uint64
	seen map[string]uint64
}

func newKeyedChooser(seed uint64) *keyedChooser {
	return &keyedChooser{seed: seed, seen: map[string]uint64{}}
}

func (c *keyedChooser) Int(label string, lo, hi int) int {
	k := c.seen[label]
	c.seen[label] = k + 1
	h := fnv.New64a()
	fmt.Fprintf(h, "%d\x00%s\x00%d", c.seed, label, k)
	r := rand.New(rand.NewPCG(h.Sum64(), c.seed))
	return lo + r.IntN(hi-lo+1)
}
