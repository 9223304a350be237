package txmanager_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/threepc/threepc/internal/seeded"
	"github.com/threepc/threepc/txmanager"
)

// crashVariant is one of the faults TestModelEveryCrashPoint plays at
// every crash point (or, for those that need the coordinator alive, at
// every step where it would have crashed).
type crashVariant struct {
	name  string
	crash bool // the coordinator crashes at the point
	llr   bool // only with the logging-last-resource optimization
	batch bool // only with batched marker rows
	// at is the action at the point (act*), when the coordinator does not
	// crash there.
	at int
	// fault answers the fault draw of an operation, by its label
	// ("fault <proc> <kind>@<db> ...").
	fault func(label string) int
}

func noFault(string) int { return fltNone }

var crashVariants = []crashVariant{
	{name: "crash", crash: true, fault: noFault},
	// Every by-id commit orphans the branch, the coordinator's too (its
	// sessions break before every commit, so it commits by id), and a
	// faulty scan runs after the coordinator is gone.
	{name: "orphans", crash: true, fault: func(l string) int {
		switch {
		case strings.Contains(l, " commit-prepared@"):
			return fltOrphan
		case strings.HasPrefix(l, "fault coord commit@"):
			return fltBefore
		}
		return fltNone
	}},
	// The answer to the LLR one-phase commit is lost (it took effect).
	{name: "lost LLR answer", crash: true, llr: true, fault: func(l string) int {
		if strings.HasPrefix(l, "fault coord commit-with-marker@") {
			return fltAfter
		}
		return fltNone
	}},
	// The answer to every marker insert of the coordinator is lost (it
	// took effect), batched or not (a row alone goes as a plain insert;
	// batches of several rows are TestModelBatchCrash's).
	{name: "lost marker answer", crash: true, fault: func(l string) int {
		if strings.HasPrefix(l, "fault coord insert-marker") {
			return fltAfter
		}
		return fltNone
	}},
	// Every marker insert of the coordinator is refused once.
	{name: "refused marker insert", crash: true, fault: func(l string) int {
		if strings.HasPrefix(l, "fault coord insert-marker") {
			return fltRefuse
		}
		return fltNone
	}},
	// An operator rolls back the step's branch (or, at the other
	// failpoints, the primary's) and the coordinator carries on.
	{name: "outside rollback", at: actOutside, fault: noFault},
	// A horizon-0 scan starts at the step and interleaves with the
	// coordinator one operation at a time, clean-up included, and runs on
	// after it returns.
	{name: "interleaved scan", at: actInterleave, fault: noFault},
	// Both: the lost LLR answer with an interleaved scan.
	{name: "interleaved scan, lost LLR answer", llr: true, at: actInterleave, fault: func(l string) int {
		if strings.HasPrefix(l, "fault coord commit-with-marker@") {
			return fltAfter
		}
		return fltNone
	}},
}

// crashScript is the chooser of one exhaustive scenario: every branch
// writes; the variant's faults; at the point (label "pause <fp>#<k>"),
// the variant's action; interleaved actors hand the baton on at every
// step (strict alternation).
func crashScript(v crashVariant, fp txmanager.Failpoint, k int) scriptChooser {
	point := fmt.Sprintf("pause %s#%d", fp, k)
	return func(label string) int {
		switch {
		case strings.HasPrefix(label, "writes-"):
			return 1
		case strings.HasPrefix(label, "fault "):
			return v.fault(label)
		case label == point:
			return v.at
		case strings.HasPrefix(label, "sched "):
			return 0
		}
		return 0
	}
}

// TestModelEveryCrashPoint plays every variant (crashVariants) at every
// occurrence of every failpoint, for 2 to 5 participants, both protocols,
// with and without the logging-last-resource optimization, asynchronous
// clean-up and batched marker rows: exhaustive over the points, with no
// other fault.
func TestModelEveryCrashPoint(t *testing.T) {
	maxN := 5
	if testing.Short() {
		maxN = 3
	}
	start := time.Now()
	counts, failed, events := map[string]int{}, map[string]int{}, map[string]int{}
	for _, v := range crashVariants {
		for n := 2; n <= maxN; n++ {
			for _, p := range []txmanager.Protocol{txmanager.ThreePC, txmanager.TwoPC} {
				for opts := range 8 {
					llr, async, batch := opts&1 == 1, opts&2 == 2, opts&4 == 4
					switch {
					case v.llr && !llr, v.batch && !batch:
						continue
					case !batch && async:
						// Without batching only the decision's path
						// changes: asynchronous clean-up is covered with it.
						continue
					}
					for _, fp := range txmanager.Failpoints() {
						for k := 1; k <= n; k++ {
							sc := scenario{n: n, protocol: p, llr: &llr, async: &async, batch: &batch, faults: true, pauses: !v.crash}
							if v.crash {
								sc.crashAt, sc.crashK = fp, k
							} else {
								sc.crashAt = "none"
							}
							r := sc.run(crashScript(v, fp, k))
							counts[v.name]++
							for _, ev := range []string{"ORPHAN", "OUTSIDE ROLLBACK", "[fail-after]", "irec"} {
								if strings.Contains(r.trace, ev) {
									events[v.name+": "+ev]++
								}
							}
							if r.violation != "" {
								// The first failure of each variant, in full; the
								// others counted.
								if failed[v.name]++; failed[v.name] == 1 {
									t.Errorf("%s at %s#%d: n=%d %s llr=%v async=%v batch=%v: %s", v.name, fp, k, n, p, llr, async, batch, r)
								}
							}
						}
					}
				}
			}
		}
	}
	t.Logf("scenarios %v in %v; scenarios where the fault happened: %v", counts, time.Since(start).Round(time.Millisecond), events)
	if len(failed) > 0 {
		t.Errorf("failed scenarios: %v", failed)
	}
}

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
