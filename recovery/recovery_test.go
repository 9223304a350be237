package recovery_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/threepc/threepc/internal/memres"
	"github.com/threepc/threepc/recovery"
	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

var errCrash = errors.New("crash")

// crashedTx runs a two-participant transaction whose coordinator crashes
// at fp, and returns its gtid.
func crashedTx(t *testing.T, w *memres.World, clock *memres.Clock, proto txmanager.Protocol, fp txmanager.Failpoint) string {
	t.Helper()
	coord := w.NewProc("coord")
	m, err := txmanager.New(coord.Resources(), txmanager.WithLastResource(false), txmanager.WithAsyncCleanup(false), txmanager.WithClock(clock), txmanager.WithLogger(quiet),
		txmanager.WithProtocol(proto), txmanager.WithCommitTimeout(100*time.Millisecond),
		txmanager.WithFailpoints(func(_ context.Context, got txmanager.Failpoint, _, _ string) error {
			if got == fp {
				coord.Crash()
				return errCrash
			}
			return nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	tx, err := m.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b"} {
		if _, err := tx.DB(n).ExecContext(ctx, "UPDATE"); err != nil {
			t.Fatal(err)
		}
	}
	_ = tx.Commit(ctx)
	return tx.GTID()
}

func newScanner(t *testing.T, p *memres.Proc, clock *memres.Clock, opts ...recovery.Option) *recovery.Scanner {
	t.Helper()
	s, err := recovery.New(p.Resources(), append([]recovery.Option{
		recovery.WithClock(clock), recovery.WithLogger(quiet), recovery.WithHorizon(time.Minute),
	}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func only(t *testing.T, rep *recovery.Report, gtid string) recovery.TxReport {
	t.Helper()
	for _, tr := range rep.Transactions {
		if tr.GTID == gtid {
			return tr
		}
	}
	t.Fatalf("gtid %s not in report %+v", gtid, rep)
	return recovery.TxReport{}
}

func TestCommitsDecidedTransaction(t *testing.T) {
	clock := memres.NewClock(time.Now())
	w := memres.NewWorld(clock, "a", "b")
	gtid := crashedTx(t, w, clock, txmanager.ThreePC, txmanager.AfterDecide)
	clock.Advance(2 * time.Minute)
	rep, err := newScanner(t, w.NewProc("rec"), clock).ScanOnce(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	tr := only(t, rep, gtid)
	if tr.Action != recovery.ActionCommit || !tr.Resolved() || len(tr.Branches) != 2 || tr.Age < 119*time.Second {
		t.Fatalf("want both branches committed, got %+v", tr)
	}
	if w.Outcome(gtid) != memres.AllCommitted {
		t.Fatalf("outcome %v", w.Outcome(gtid))
	}
	if err := w.CheckClean(); err != nil {
		t.Fatal(err)
	}
	if len(rep.InDoubt()) != 0 {
		t.Fatalf("nothing should be in doubt: %+v", rep.InDoubt())
	}
}

func TestLeavesYoungTransactionsAlone(t *testing.T) {
	clock := memres.NewClock(time.Now())
	w := memres.NewWorld(clock, "a", "b")
	gtid := crashedTx(t, w, clock, txmanager.ThreePC, txmanager.BeforeDecide)
	rep, err := newScanner(t, w.NewProc("rec"), clock).ScanOnce(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if tr := only(t, rep, gtid); tr.Action != recovery.ActionWait {
		t.Fatalf("a young transaction must be left in flight, got %+v", tr)
	}
	if w.Outcome(gtid) != memres.Unfinished {
		t.Fatal("young transaction touched")
	}
}

func TestFencesUndecidedTransactionAndKeepsTheAbortRow(t *testing.T) {
	clock := memres.NewClock(time.Now())
	w := memres.NewWorld(clock, "a", "b")
	gtid := crashedTx(t, w, clock, txmanager.ThreePC, txmanager.BeforeDecide)
	clock.Advance(2 * time.Minute)
	sc := newScanner(t, w.NewProc("rec"), clock, recovery.WithRetention(time.Hour))
	rep, err := sc.ScanOnce(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if tr := only(t, rep, gtid); tr.Action != recovery.ActionFence || !tr.Resolved() {
		t.Fatalf("want fence + rollback, got %+v", tr)
	}
	if w.Outcome(gtid) != memres.AllAborted {
		t.Fatalf("outcome %v", w.Outcome(gtid))
	}
	// The abort row outlives the scan: it is the fence.
	if err := w.CheckClean(); err == nil {
		t.Fatal("the abort row must be kept for the retention period")
	}
	rep, _ = sc.ScanOnce(context.Background())
	if tr := only(t, rep, gtid); tr.Action != recovery.ActionWait {
		t.Fatalf("abort row within retention: want wait, got %+v", tr)
	}
	clock.Advance(2 * time.Hour)
	rep, _ = sc.ScanOnce(context.Background())
	if tr := only(t, rep, gtid); tr.Action != recovery.ActionCollect {
		t.Fatalf("abort row past retention: want collect, got %+v", tr)
	}
	if err := w.CheckClean(); err != nil {
		t.Fatal(err)
	}
}

// TestBlockingIsHonest: 2PC, coordinator dead before the decision, primary
// down: the transaction is in doubt, not guessed; it resolves once the
// primary returns.
func TestBlockingIsHonest(t *testing.T) {
	clock := memres.NewClock(time.Now())
	w := memres.NewWorld(clock, "a", "b")
	gtid := crashedTx(t, w, clock, txmanager.TwoPC, txmanager.BeforeDecide)
	clock.Advance(2 * time.Minute)
	w.SetDown("a", true) // "a" enlisted first: the primary
	sc := newScanner(t, w.NewProc("rec"), clock)
	rep, err := sc.ScanOnce(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	tr := only(t, rep, gtid)
	if tr.Action != recovery.ActionInDoubt || tr.Resolved() || rep.Unreachable["a"] == nil {
		t.Fatalf("want in doubt with the primary unreachable, got %+v", tr)
	}
	if got := rep.OldestInDoubt(); got < 119*time.Second {
		t.Fatalf("in-doubt age %v", got)
	}
	if w.Outcome(gtid) != memres.Unfinished {
		t.Fatal("recovery guessed")
	}
	w.SetDown("a", false)
	rep, _ = sc.ScanOnce(context.Background())
	if tr := only(t, rep, gtid); !tr.Resolved() {
		t.Fatalf("want resolved after the primary returns, got %+v", tr)
	}
	if w.Outcome(gtid) != memres.AllAborted {
		t.Fatalf("outcome %v", w.Outcome(gtid))
	}
}

// TestThreePCDoesNotBlockOnPrimary: after the decision, a pre-commit row
// at a surviving participant lets recovery commit while the primary is
// down (2PC would block here).
func TestThreePCDoesNotBlockOnPrimary(t *testing.T) {
	clock := memres.NewClock(time.Now())
	w := memres.NewWorld(clock, "a", "b")
	gtid := crashedTx(t, w, clock, txmanager.ThreePC, txmanager.BeforeCommit)
	clock.Advance(2 * time.Minute)
	w.SetDown("a", true)
	rep, err := newScanner(t, w.NewProc("rec"), clock).ScanOnce(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	tr := only(t, rep, gtid)
	if tr.Action != recovery.ActionCommit || len(tr.Branches) != 1 || !tr.Branches[0].Done {
		t.Fatalf("want b committed from its own precommit row, got %+v", tr)
	}
}

func TestInspectChangesNothing(t *testing.T) {
	clock := memres.NewClock(time.Now())
	w := memres.NewWorld(clock, "a", "b")
	decided := crashedTx(t, w, clock, txmanager.ThreePC, txmanager.AfterDecide)
	undecided := crashedTx(t, w, clock, txmanager.ThreePC, txmanager.BeforeDecide)
	clock.Advance(2 * time.Minute)
	rep, err := newScanner(t, w.NewProc("rec"), clock).Inspect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !rep.DryRun {
		t.Fatal("not marked as a dry run")
	}
	if tr := only(t, rep, decided); tr.Action != recovery.ActionCommit || tr.Markers["a"].State != resource.StatePreCommit {
		t.Fatalf("decided: %+v", tr)
	}
	if tr := only(t, rep, undecided); tr.Action != recovery.ActionFence {
		t.Fatalf("undecided: %+v", tr)
	}
	if w.Outcome(decided) != memres.Unfinished || w.Outcome(undecided) != memres.Unfinished {
		t.Fatal("Inspect changed the databases")
	}
}

func TestConcurrentScannersAgree(t *testing.T) {
	clock := memres.NewClock(time.Now())
	w := memres.NewWorld(clock, "a", "b")
	var gtids []string
	for _, fp := range []txmanager.Failpoint{txmanager.BeforeDecide, txmanager.AfterDecide, txmanager.AfterPreCommit, txmanager.AfterCommit} {
		gtids = append(gtids, crashedTx(t, w, clock, txmanager.ThreePC, fp))
	}
	clock.Advance(2 * time.Minute)
	done := make(chan error, 2)
	for i := 0; i < 2; i++ {
		sc := newScanner(t, w.NewProc("rec"), clock)
		go func() { _, err := sc.ScanOnce(context.Background()); done <- err }()
	}
	for i := 0; i < 2; i++ {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if err := w.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
	for _, g := range gtids {
		if o := w.Outcome(g); o != memres.AllCommitted && o != memres.AllAborted {
			t.Fatalf("%s: %v", g, o)
		}
	}
}

func TestRunStopsWithContextAndBacksOff(t *testing.T) {
	clock := memres.NewClock(time.Now())
	w := memres.NewWorld(clock, "a", "b")
	w.SetDown("b", true)
	sc := newScanner(t, w.NewProc("rec"), clock)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	scans := 0
	err := sc.Run(ctx, 20*time.Millisecond, func(r *recovery.Report) {
		scans++
		if r.Unreachable["b"] == nil {
			t.Error("b should be reported unreachable")
		}
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run returned %v", err)
	}
	// Without back-off there would be ~15 scans in 300 ms; with doubling
	// from 20 ms there are at most 5 (0, 20, 40, 80, 160 ms).
	if scans == 0 || scans > 6 {
		t.Fatalf("%d scans in 300ms: back-off not applied", scans)
	}
}

func TestOptionsValidated(t *testing.T) {
	if _, err := recovery.New(nil, recovery.WithRetention(time.Second)); err == nil {
		t.Fatal("a retention shorter than MinRetention must be refused")
	}
	if _, err := recovery.New(nil, recovery.WithHorizon(-time.Second)); err == nil {
		t.Fatal("a negative horizon must be refused")
	}
	s, err := recovery.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ScanOnce(context.Background()); err == nil {
		t.Fatal("a scanner without resources must say so")
	}
}
