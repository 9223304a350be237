package txmanager_test

import (
	"fmt"
	"os"
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
		for _, cf := range crashConfigs(v, maxN) {
			for _, fp := range txmanager.Failpoints() {
				for k := 1; k <= cf.n; k++ {
					sc := scenario{n: cf.n, protocol: cf.protocol, llr: &cf.llr, async: &cf.async, batch: &cf.batch, commitFirst: &cf.commitFirst,
						faults: true, pauses: !v.crash, crashAt: "none"}
					// A plain crash: 3PC must not leave a branch waiting
					// on the primary alone.
					sc.nonBlocking = v.name == "crash" && cf.protocol == txmanager.ThreePC
					if v.crash {
						sc.crashAt, sc.crashK = fp, k
					}
					r := sc.run(crashScript(v, fp, k))
					counts[v.name]++
					for _, ev := range []string{"ORPHAN", "OUTSIDE ROLLBACK", "[fail-after]", "irec"} {
						if strings.Contains(r.trace, ev) {
							events[v.name+": "+ev]++
						}
					}
					// The first failure of each variant, in full; the
					// others counted.
					if r.violation != "" {
						if failed[v.name]++; failed[v.name] == 1 {
							t.Errorf("%s at %s#%d: %+v: %s", v.name, fp, k, cf, r)
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

// crashConfig is one configuration whose every crash point
// TestModelEveryCrashPoint plays.
type crashConfig struct {
	n                              int
	protocol                       txmanager.Protocol
	llr, async, batch, commitFirst bool
}

// crashConfigs lists the configurations for variant v: 2 to maxN
// participants, both protocols, the optimizations on and off, and both
// orders of the overlapped precommit row and commit where they overlap
// (3PC, logging last resource, one branch besides the primary).
func crashConfigs(v crashVariant, maxN int) []crashConfig {
	var cs []crashConfig
	for n := 2; n <= maxN; n++ {
		for _, p := range []txmanager.Protocol{txmanager.ThreePC, txmanager.TwoPC} {
			for opts := range 8 {
				llr, async, batch := opts&1 == 1, opts&2 == 2, opts&4 == 4
				switch {
				case v.llr && !llr, v.batch && !batch:
					continue
				case !batch && async:
					// Without batching only the decision's path changes:
					// asynchronous clean-up is covered with it.
					continue
				}
				cs = append(cs, crashConfig{n: n, protocol: p, llr: llr, async: async, batch: batch})
				if n == 2 && llr && p == txmanager.ThreePC {
					cs = append(cs, crashConfig{n: n, protocol: p, llr: llr, async: async, batch: batch, commitFirst: true})
				}
			}
		}
	}
	return cs
}

// TestPlantedBugTestsBuilt: the tests that plant bugs (TestModelSeededBugs
// and the integration tests') are built only with the threepc_seeded
// tag; CI must build them, or it would pass without proving that the
// checkers catch anything.
func TestPlantedBugTestsBuilt(t *testing.T) {
	if seeded.Enabled {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("built without -tags threepc_seeded: the planted-bug tests are left out (run scripts/test.sh)")
	}
	t.Skip("built without -tags threepc_seeded: the planted-bug tests are left out (scripts/test.sh sets it)")
}
