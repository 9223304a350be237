package integration_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/recovery"
	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

// TestTwoDeployments is issue 10's third acceptance test: two deployments
// of threepc on the same PostgreSQL and MariaDB servers, both naming their
// resources "pg" and "maria". Deployment A runs the bank workload (3PC,
// 2PC and logging last resource) while deployment B's scanner loops with
// horizon 0, which fences at once whatever it takes for its own.
//
//   - databases: B has databases of its own. XA RECOVER lists the whole
//     MariaDB server, so before issue 10 B's scanner took A's MariaDB
//     branches for its own, fenced them at its own primary and rolled
//     them back, while A's coordinator took the vanished branch for
//     "committed by recovery": money created, "0 in doubt". Branch ids now
//     carry their database's tag: B must never see A's branches at all.
//   - namespaces: B shares A's databases (and marker tables) under another
//     namespace (txmanager.WithNamespace, recovery.WithNamespace). B sees
//     A's branches (Report.Foreign counts them) and must leave them, and
//     A's marker rows, alone.
//
// Either way: zero mixed outcomes and every coordinator's answer true to
// the data (checkBank), and B's scans report no transaction at all.
func TestTwoDeployments(t *testing.T) {
	pg := harness.Shared(t, harness.Postgres)
	my := harness.Shared(t, harness.MariaDB)
	t.Run("databases", func(t *testing.T) {
		a := []part{newPart(t, pg, "pg", accountsDDL, ledgerDDL), newPart(t, my, "maria", accountsDDL, ledgerDDL)}
		b := []part{newPart(t, pg, "pg", accountsDDL, ledgerDDL), newPart(t, my, "maria", accountsDDL, ledgerDDL)}
		foreign := twoDeployments(t, a, b, "", "")
		// Each database's listing shows only its own branches: B never
		// even sees A's.
		t.Logf("B's scanner counted %d foreign branches", foreign)
	})
	t.Run("namespaces", func(t *testing.T) {
		a := []part{newPart(t, pg, "pg", accountsDDL, ledgerDDL), newPart(t, my, "maria", accountsDDL, ledgerDDL)}
		if foreign := twoDeployments(t, a, a, "team-a", "team-b"); foreign == 0 {
			t.Errorf("B's scanner, sharing A's databases, never counted one of A's prepared branches as foreign (Report.Foreign)")
		}
	})
}

// twoDeployments runs A's workload on a (namespace nsA) beside B's
// looping scanner on b (namespace nsB), checks both, and returns the sum
// of B's Report.Foreign.
func twoDeployments(t *testing.T, a, b []part, nsA, nsB string) (foreign int) {
	rsA := openAll(t, a)
	seedBank(t, rsA)
	ms := bankManagers(t, openAll(t, a), txmanager.WithNamespace(nsA))
	llr := bankManagers(t, openAll(t, a), txmanager.WithNamespace(nsA), txmanager.WithLastResource(true))
	managers := []*txmanager.Manager{ms[0], ms[1], llr[0], llr[1]}

	scB, err := recovery.New(openAll(t, b), recovery.WithHorizon(0), recovery.WithNamespace(nsB),
		recovery.WithLogger(quiet), recovery.WithInstanceID("deployment-b"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	scans := &scanLog{}
	var mu sync.Mutex
	var seenB []recovery.TxReport
	wg.Go(func() {
		_ = scB.Run(ctx, 5*time.Millisecond, func(rep *recovery.Report) {
			scans.add(rep)
			mu.Lock()
			seenB = append(seenB, rep.Transactions...)
			mu.Unlock()
		})
	})
	stop := make(chan struct{})
	w := runWorkload(t, managers, "pg", "maria", 6, stop)
	time.Sleep(4 * time.Second)
	close(stop)
	w.wait(t)
	cancel()
	wg.Wait()
	t.Logf("deployment B's scanner: %s; %d foreign branches seen", scans.counts(), scans.foreign)
	for _, tx := range seenB {
		t.Errorf("deployment B's scanner reported a transaction of A: %s action %s (%s), err %v", tx.GTID, tx.Action, tx.Reason, tx.Err)
	}
	if len(scans.st.badErrs) > 0 {
		t.Errorf("deployment B's scanner errors: %v", scans.st.badErrs)
	}

	st := finalRecovery(t, rsA, recovery.WithNamespace(nsA))
	if len(st.badErrs) > 0 {
		t.Errorf("A's recovery errors: %v", st.badErrs)
	}
	checkBank(t, w, rsA)
	errorsCapped(t, "CONTRADICTORY ROWS after recovery", contradictions(t, testCtx(t, time.Minute), rsA, committedGTIDs(t, w, rsA[0])))
	if nsA != nsB {
		checkSpace(t, rsA, resource.SpaceTag(nsA))
	}
	collectAborts(t, rsA, recovery.WithNamespace(nsA))
	return scans.foreign
}

// checkSpace asserts that every marker row on rs carries the namespace
// tag space: nobody else wrote to the shared marker tables.
func checkSpace(t *testing.T, rs []resource.Resource, space string) {
	t.Helper()
	for name, ms := range markers(t, testCtx(t, time.Minute), rs) {
		for _, m := range ms {
			if m.Space != space {
				t.Errorf("marker row %s %s at %s has namespace tag %q, want %q (A's)", m.GTID, m.State, name, m.Space, space)
			}
		}
	}
}
