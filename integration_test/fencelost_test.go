package integration_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/recovery"
	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

// gatedResource lets a test stop a scanner just before its fence insert.
type gatedResource struct {
	resource.Resource
	beforeInsert func(m resource.Marker)
}

func (g gatedResource) InsertMarker(ctx context.Context, m resource.Marker) error {
	if g.beforeInsert != nil {
		g.beforeInsert(m)
	}
	return g.Resource.InsertMarker(ctx, m)
}

// TestRaceFenceLostThenCollect scripts, step by step, the interleaving
// that TestRaceScannerUnderLoad hits at random:
//
//  1. the coordinator has prepared the PostgreSQL branch; the MariaDB
//     branch is not prepared yet;
//  2. a scan lists the markers (none) and the prepared branches (only
//     PostgreSQL's), and goes to fence at the primary;
//  3. before its insert lands, the coordinator prepares MariaDB and
//     decides: the precommit row is in at the primary;
//  4. the fence insert conflicts, the scanner reads the precommit row,
//     commits the branch it saw... and then collects the marker rows,
//     because it saw no other prepared branch, though its listing was
//     taken before the decision and proves nothing about MariaDB;
//  5. the next scan finds the MariaDB branch prepared with no marker
//     anywhere, fences and rolls it back;
//  6. the coordinator commits: PostgreSQL is already committed, MariaDB is
//     "unknown", which after a decision it took for committed by
//     recovery (before issue 10), and it returned nil.
//
// Result: committed at PostgreSQL, rolled back at MariaDB, and the caller
// told "committed". PROTOCOL.md's markers-first rule ("a precommit row
// seen before the listing proves that any branch missing from the listing
// was committed") does not cover a precommit row learned after the
// listing, through the fence's conflict; collecting then is unsafe.
func TestRaceFenceLostThenCollect(t *testing.T) {
	pg := harness.Shared(t, harness.Postgres)
	my := harness.Shared(t, harness.MariaDB)
	ps := []part{newPart(t, pg, "fl_pg", crashTable), newPart(t, my, "fl_my", crashTable)}
	for _, protocol := range []txmanager.Protocol{txmanager.TwoPC, txmanager.ThreePC} {
		t.Run(string(protocol), func(t *testing.T) { fenceLostThenCollect(t, ps, protocol) })
	}
}

func fenceLostThenCollect(t *testing.T, ps []part, protocol txmanager.Protocol) {
	ctx := testCtx(t, time.Minute)
	key := "fence-lost-" + string(protocol)
	coordRs := openAll(t, ps)
	myPrepare, decided, commit := make(chan struct{}), make(chan struct{}), make(chan struct{})
	hook := func(ctx context.Context, fp txmanager.Failpoint, gtid, res string) error {
		switch {
		case fp == txmanager.BeforePrepare && res == "fl_my":
			<-myPrepare
		case fp == txmanager.AfterDecide:
			close(decided)
			<-commit
		}
		return nil
	}
	m, err := txmanager.New(coordRs, txmanager.WithLastResource(false), txmanager.WithAsyncCleanup(false), txmanager.WithProtocol(protocol), txmanager.WithFailpoints(hook),
		txmanager.WithTimeout(20*time.Second), txmanager.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	gtidCh := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- m.Run(ctx, func(ctx context.Context, tx *txmanager.Tx) error {
			gtidCh <- tx.GTID()
			for _, r := range coordRs { // fl_pg first: the primary
				if _, err := tx.DB(r.Name()).ExecContext(ctx, "INSERT INTO crash_rows (k) VALUES ("+ph(r, 1)+")", key); err != nil {
					return err
				}
			}
			return nil
		})
	}()
	gtid := <-gtidCh
	rs := openAll(t, ps)
	// Step 1: wait for the PostgreSQL branch to be prepared.
	for end := time.Now().Add(10 * time.Second); countPrepared(prepared(t, ctx, rs[:1]), gtid) == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("the PostgreSQL branch was never prepared")
		}
	}
	// Steps 2-4: the scanner's fence insert waits for the decision.
	var once sync.Once
	gated := gatedResource{Resource: rs[0], beforeInsert: func(mk resource.Marker) {
		if mk.State != resource.StateAbort {
			return
		}
		once.Do(func() {
			close(myPrepare)
			select {
			case <-decided:
			case <-time.After(10 * time.Second):
				t.Error("the coordinator did not decide")
			}
		})
	}}
	sc, err := recovery.New([]resource.Resource{gated, rs[1]}, recovery.WithHorizon(0), recovery.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	st := &scanStats{}
	for range 2 { // step 4, then step 5
		rep, err := sc.ScanOnce(ctx)
		if err != nil {
			t.Fatal(err)
		}
		st.add(rep)
	}
	close(commit) // step 6
	cerr := <-done
	recoverFresh(t, rs, 20*time.Second)

	n := []int{
		count(t, ctx, rs[0], "SELECT COUNT(*) FROM crash_rows WHERE k = $1", key),
		count(t, ctx, rs[1], "SELECT COUNT(*) FROM crash_rows WHERE k = ?", key),
	}
	t.Logf("coordinator: %v; rows (pg, mariadb): %v; scans:\n  %s", cerr, n, joinLines(st.history[gtid]))
	if n[0] != n[1] || (cerr == nil && n[0] != 1) || (errors.Is(cerr, txmanager.ErrAborted) && n[0] != 0) {
		t.Log("CAUSE (recovery/recovery.go, resolve/fence/collect): after a fence that lost to the coordinator's " +
			"precommit row, the scan collects the marker rows although its branch listing predates the decision; " +
			"a branch prepared after the listing is then found with no marker by the next scan, fenced and rolled back.")
		t.Errorf("MIXED OUTCOME or wrong answer: coordinator %v, rows %v", cerr, n)
	}
	// The primary's row is a tombstone now (the coordinator's clean-up
	// never deletes it): an abort row there, or anywhere beside a
	// precommit row, would contradict the outcome.
	t.Logf("abort rows after recovery: %v", checkClean(t, ctx, rs))
	for _, c := range contradictions(t, ctx, rs, map[string]bool{gtid: n[0] == 1 && n[1] == 1}) {
		t.Errorf("contradictory rows after recovery: %s", c)
	}
}

func joinLines(ls []string) string {
	out := ""
	for i, l := range ls {
		if i > 0 {
			out += "\n  "
		}
		out += l
	}
	return out
}
