package integration_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/recovery"
	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

// TestRaceScanWhilePaused pauses a live coordinator at each failpoint,
// runs recovery scans that treat every transaction as old (horizon 0, the
// worst case: a scanner whose clock or horizon is wrong), then lets the
// coordinator go on. Whatever the interleaving, the outcome is one for
// every branch, and the coordinator's answer matches the data: nil means
// committed, ErrAborted rolled back, ErrInDoubt either, resolved by
// recovery.
func TestRaceScanWhilePaused(t *testing.T) {
	pg := harness.Shared(t, harness.Postgres)
	my := harness.Shared(t, harness.MariaDB)
	ps := []part{newPart(t, pg, "race_pg", crashTable), newPart(t, my, "race_my", crashTable)}
	coordRs := openAll(t, ps)
	for _, protocol := range []txmanager.Protocol{txmanager.TwoPC, txmanager.ThreePC} {
		for _, fp := range txmanager.Failpoints() {
			switch fp {
			case txmanager.BeforeRollback, txmanager.AfterRollback, txmanager.BeforeOnePhase:
				continue // not on the commit path of a two-participant transaction
			case txmanager.BeforePreCommit, txmanager.AfterPreCommit:
				if protocol == txmanager.TwoPC {
					continue
				}
			}
			t.Run(fmt.Sprintf("%s/%s", protocol, fp), func(t *testing.T) {
				for _, p := range racePaused(t, ps, coordRs, protocol, fp) {
					t.Error(p)
				}
			})
		}
	}
	collectAborts(t, openAll(t, ps))
}

// racePaused runs one transaction paused at target while two scans run,
// and returns the broken invariants.
func racePaused(t *testing.T, ps []part, coordRs []resource.Resource, protocol txmanager.Protocol, target txmanager.Failpoint) (problems []string) {
	ctx := testCtx(t, time.Minute)
	key := fmt.Sprintf("race-%s-%s", protocol, target)
	paused, release := make(chan string, 1), make(chan struct{})
	var once sync.Once
	hook := func(ctx context.Context, fp txmanager.Failpoint, gtid, res string) error {
		if fp != target {
			return nil
		}
		first := false
		once.Do(func() { first = true })
		if first {
			paused <- res
			<-release
		}
		return nil
	}
	m, err := txmanager.New(coordRs, txmanager.WithLastResource(false), txmanager.WithAsyncCleanup(false), txmanager.WithProtocol(protocol), txmanager.WithFailpoints(hook),
		txmanager.WithTimeout(10*time.Second), txmanager.WithCommitTimeout(5*time.Second), txmanager.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	var gtid string
	done := make(chan error, 1)
	go func() {
		done <- m.Run(ctx, func(ctx context.Context, tx *txmanager.Tx) error {
			gtid = tx.GTID()
			for _, r := range coordRs {
				if _, err := tx.DB(r.Name()).ExecContext(ctx, "INSERT INTO crash_rows (k) VALUES ("+ph(r, 1)+")", key); err != nil {
					return err
				}
			}
			return nil
		})
	}()
	var at string
	select {
	case at = <-paused:
	case err := <-done:
		t.Fatalf("coordinator finished (%v) without reaching %s", err, target)
	}

	rs := openAll(t, ps)
	sc, err := recovery.New(rs, recovery.WithHorizon(0), recovery.WithLogger(quiet), recovery.WithInstanceID("race-scanner"))
	if err != nil {
		t.Fatal(err)
	}
	st := &scanStats{}
	var actions []recovery.Action
	for range 2 {
		rep, err := sc.ScanOnce(ctx)
		if err != nil {
			t.Fatalf("ScanOnce while paused: %v", err)
		}
		st.add(rep)
		for _, tx := range rep.Transactions {
			if tx.GTID == gtid {
				actions = append(actions, tx.Action)
			}
		}
	}
	close(release)
	var cerr error
	select {
	case cerr = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("coordinator did not finish after release")
	}
	if len(st.badErrs) > 0 {
		t.Errorf("scan errors while paused: %v", st.badErrs)
	}

	// A planted bug may leave a heuristic outcome, which recovery reports
	// and keeps for an operator: a broken promise, repaired here so that
	// the end state can be checked.
	st2, heuristic := recoverHeuristic(t, rs, 20*time.Second)
	for _, tx := range heuristic {
		problems = append(problems, fmt.Sprintf("HEURISTIC outcome after recovery for %s: branches %v lost (%s)", tx.GTID, tx.Lost, tx.Reason))
	}
	repairHeuristic(t, rs, heuristic)
	if len(st2.badErrs) > 0 && len(heuristic) == 0 {
		t.Errorf("recovery errors: %v", st2.badErrs)
	}
	n := make([]int, len(rs))
	for i, r := range rs {
		n[i] = count(t, ctx, r, "SELECT COUNT(*) FROM crash_rows WHERE k = "+ph(r, 1), key)
	}
	if n[0] != n[1] {
		problems = append(problems, fmt.Sprintf("MIXED OUTCOME for %s paused at %s: rows %v (coordinator: %v, scans: %v)", gtid, target, n, cerr, actions))
	}
	switch {
	case cerr == nil, errors.Is(cerr, txmanager.ErrCommitPending):
		if n[0] != 1 || n[1] != 1 {
			problems = append(problems, fmt.Sprintf("coordinator reported commit (%v) but rows are %v", cerr, n))
		}
	case errors.Is(cerr, txmanager.ErrAborted):
		if n[0] != 0 || n[1] != 0 {
			problems = append(problems, fmt.Sprintf("coordinator reported abort (%v) but rows are %v", cerr, n))
		}
	case errors.Is(cerr, txmanager.ErrInDoubt):
	case errors.Is(cerr, txmanager.ErrHeuristic):
		// Nothing outside threepc touched the branches.
		problems = append(problems, fmt.Sprintf("coordinator reported a heuristic outcome, rows %v: %v", n, cerr))
	default:
		problems = append(problems, fmt.Sprintf("coordinator returned an error outside the outcome classes: %v", cerr))
	}
	checkClean(t, ctx, rs)
	t.Logf("paused at %s on %s; scans did %v (%d busy-branch answers); coordinator: %v; rows: %v",
		target, at, actions, st.benignErrs, cerr, n)
	return problems
}

// TestRaceTwoScanners runs two scanners, each with its own pools, at the
// same time over transactions left in doubt by crashed coordinators, some
// to be committed and some to be fenced and rolled back. Both finish, the
// only errors are branches busy in the other scanner's session, and every
// transaction ends one way.
func TestRaceTwoScanners(t *testing.T) {
	pg := harness.Shared(t, harness.Postgres)
	my := harness.Shared(t, harness.MariaDB)
	ps := []part{newPart(t, pg, "two_pg", crashTable), newPart(t, my, "two_my", crashTable), newPart(t, pg, "two_pg2", crashTable)}
	cases := []struct {
		protocol txmanager.Protocol
		fp       txmanager.Failpoint
		k        int
		commit   bool
	}{
		{txmanager.TwoPC, txmanager.BeforeDecide, 1, false},
		{txmanager.ThreePC, txmanager.BeforeDecide, 1, false},
		{txmanager.TwoPC, txmanager.AfterPrepare, 2, false},
		{txmanager.TwoPC, txmanager.AfterDecide, 1, true},
		{txmanager.ThreePC, txmanager.AfterPreCommit, 1, true},
		{txmanager.ThreePC, txmanager.AfterCommit, 1, true},
	}
	keys := make([]string, len(cases))
	children := make([]*childProc, len(cases))
	for i, c := range cases {
		keys[i] = fmt.Sprintf("two-%d-%s-%s", i, c.protocol, c.fp)
		children[i] = startChild(t, crashRun{parts: ps, protocol: c.protocol, fp: c.fp, k: c.k, key: keys[i]})
	}
	for _, c := range children {
		c.crashed(t)
	}
	waitSessionsGone(t, ps)
	ctx := testCtx(t, time.Minute)
	rs := openAll(t, ps)
	before := countPrepared(prepared(t, ctx, rs), "")

	var wg sync.WaitGroup
	stats := make([]*scanStats, 2)
	start := make(chan struct{})
	for i := range stats {
		srs := openAll(t, ps)
		sc, err := recovery.New(srs, recovery.WithHorizon(0), recovery.WithLogger(quiet), recovery.WithInstanceID(fmt.Sprintf("scanner-%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			<-start
			stats[i] = recoverAll(t, sc, srs, 20*time.Second)
		})
	}
	close(start)
	wg.Wait()
	for i, st := range stats {
		if st == nil {
			continue // recoverAll failed the test
		}
		t.Logf("scanner %d: %d scans, %d actions, %d busy-branch answers", i, st.scans, st.actions, st.benignErrs)
		if len(st.badErrs) > 0 {
			t.Errorf("scanner %d errors: %v", i, st.badErrs)
		}
		if st.scans > 20 {
			t.Errorf("scanner %d needed %d scans: an error storm", i, st.scans)
		}
	}
	for i, c := range cases {
		want := 0
		if c.commit {
			want = 1
		}
		for _, r := range rs {
			if got := count(t, ctx, r, "SELECT COUNT(*) FROM crash_rows WHERE k = "+ph(r, 1), keys[i]); got != want {
				t.Errorf("%s: %d rows at %s, want %d", keys[i], got, r.Name(), want)
			}
		}
	}
	aborts := checkClean(t, ctx, rs)
	if len(aborts) != 3 {
		t.Errorf("abort rows %v, want 3 (one per rolled-back transaction)", aborts)
	}
	t.Logf("%d prepared branches before the scanners ran", before)
	collectAborts(t, rs)
}

// TestRaceScannerUnderLoad runs the bank workload while a scanner with
// horizon 0 scans in a tight loop: every prepared branch it sees is fenced
// at once, from any phase of any transaction. Each coordinator's answer
// must still match the data, and no transfer may be half done.
//
// It fails at random (most runs of ten) while the fence-lost collection
// bug that TestRaceFenceLostThenCollect scripts is in recovery.
func TestRaceScannerUnderLoad(t *testing.T) {
	pg := harness.Shared(t, harness.Postgres)
	my := harness.Shared(t, harness.MariaDB)
	ps := []part{newPart(t, pg, "load_pg", accountsDDL, ledgerDDL), newPart(t, my, "load_my", accountsDDL, ledgerDDL)}
	rs := openAll(t, ps)
	seedBank(t, rs)
	sc, err := recovery.New(openAll(t, ps), recovery.WithHorizon(0), recovery.WithLogger(quiet), recovery.WithInstanceID("eager"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	st := &scanStats{}
	wg.Go(func() { _ = sc.Run(ctx, 5*time.Millisecond, st.add) })
	stop := make(chan struct{})
	w := runWorkload(t, bankManagers(t, openAll(t, ps)), "load_pg", "load_my", 6, stop)
	time.Sleep(3 * time.Second)
	close(stop)
	w.wait(t)
	cancel()
	wg.Wait()
	t.Logf("eager scanner: %d scans, %d actions, %d busy-branch answers", st.scans, st.actions, st.benignErrs)
	if len(st.badErrs) > 0 {
		for _, e := range st.badErrs {
			if strings.Contains(e, resource.ErrNoMarker.Error()) {
				t.Log("CAUSE of the no-marker-row errors (recovery/recovery.go, fence): the fence insert conflicts with the " +
					"coordinator's precommit row, which the coordinator's clean-up deletes before the scanner reads it back; " +
					"the scan then reports a finished transaction as in doubt, with an error, instead of re-reading")
				break
			}
		}
		t.Errorf("scanner errors under load: %d, e.g. %q", len(st.badErrs), st.badErrs[:min(5, len(st.badErrs))])
	}
	if st.actions == 0 {
		t.Errorf("the eager scanner never acted: the race did not happen")
	}
	recoverFresh(t, rs, 30*time.Second)
	for _, g := range checkBank(t, w, rs) {
		t.Logf("what the eager scanner saw and did for %s:\n  %s", g, strings.Join(st.history[g], "\n  "))
	}
}
