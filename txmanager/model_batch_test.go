package txmanager_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/threepc/threepc/internal/memres"
	"github.com/threepc/threepc/recovery"
	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

// TestModelBatchCrash runs several transactions at once so that their
// marker rows share a batch (WithBatching), and crashes the coordinator
// in the middle of that batch: before the statement (fail-before), after
// it took effect with the answer lost (fail-after), or after the answer
// came back but before it was handed out (the after-batch failpoint); or
// refuses the batch, whose rows must then go again one by one and commit.
// Recovery must then finish every transaction one way, consistently with
// whatever the coordinator had already told its callers.
func TestModelBatchCrash(t *testing.T) {
	const txs = 6
	for _, proto := range []txmanager.Protocol{txmanager.ThreePC, txmanager.TwoPC} {
		for _, llr := range []bool{false, true} {
			for _, how := range []string{"fail-before", "fail-after", "after-batch", "refused"} {
				for _, which := range []string{"decision", "precommit"} {
					if which == "decision" && llr {
						continue // the decision is inside the primary's commit
					}
					if which == "precommit" && proto == txmanager.TwoPC {
						continue
					}
					name := fmt.Sprintf("%s/llr=%v/%s/%s", proto, llr, which, how)
					t.Run(name, func(t *testing.T) {
						batched := runBatchCrash(t, proto, llr, which, how, txs)
						if batched < 2 {
							t.Fatalf("the crash hit a batch of %d rows, want several", batched)
						}
					})
				}
			}
		}
	}
}

func runBatchCrash(t *testing.T, proto txmanager.Protocol, llr bool, which, how string, txs int) int {
	clock := memres.NewClock(time.Now())
	names := []string{"db0", "db1", "db2"}
	world := memres.NewWorld(clock, names...)
	coord := world.NewProc("coord")
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	// The crash hits the first batch of several rows of the chosen kind:
	// decision rows at the primary (db0), pre-commit rows elsewhere.
	state := resource.StatePreCommit
	atPrimary := which == "decision"
	var (
		mu       sync.Mutex
		crashed  bool
		faulted  bool // the fault hit a batch of several rows
		batched  int
		arrivals int
		gate     = make(chan struct{})
	)
	isTarget := func(db string) bool { return db == "db0" && atPrimary || db == "db1" && !atPrimary }
	// Every transaction waits at the step before the batched insert until
	// all of them got there, so that their rows queue behind one batch.
	waitPoint := txmanager.BeforeDecide
	if which == "precommit" {
		waitPoint = txmanager.BeforePreCommit
	}
	hook := func(ctx context.Context, fp txmanager.Failpoint, gtid, res string) error {
		mu.Lock()
		if crashed {
			mu.Unlock()
			return errCrashed
		}
		switch {
		case fp == waitPoint && (which == "decision" || res == "db1"):
			arrivals++
			if arrivals == txs {
				close(gate)
			}
			mu.Unlock()
			select {
			case <-gate:
			case <-time.After(5 * time.Second):
			}
			return nil
		case fp == txmanager.AfterBatch && how == "after-batch" && isTarget(res) && strings.Contains(gtid, ","):
			crashed, faulted, batched = true, true, strings.Count(gtid, ",")+1
			mu.Unlock()
			coord.Crash()
			return errCrashed
		}
		mu.Unlock()
		return nil
	}
	fault := memres.NoFault
	switch how {
	case "fail-before":
		fault = memres.FailBefore
	case "fail-after":
		fault = memres.FailAfter
	case "refused":
		fault = memres.Refuse // nothing went in: the rows go again one by one
	}
	slowed := false
	world.Fault = func(op memres.Op) memres.Fault {
		if op.Kind != "insert-markers" && op.Kind != "insert-marker" || !isTarget(op.DB) || op.State != state {
			return memres.NoFault
		}
		mu.Lock()
		defer mu.Unlock()
		switch {
		case op.Rows <= 1 && !slowed:
			// The first batch, the leader's row alone, is slow, as on a
			// real network: the others' rows queue behind it.
			slowed = true
			mu.Unlock()
			time.Sleep(50 * time.Millisecond)
			mu.Lock()
			return memres.NoFault
		case faulted || op.Rows < 2 || fault == memres.NoFault:
			return memres.NoFault
		}
		faulted, batched = true, op.Rows
		crashed = how != "refused" // the others crash right after it
		return fault
	}
	if fault != memres.NoFault {
		world.AfterOp = func(op memres.Op) {
			if how != "refused" && op.Kind == "insert-markers" && op.Rows == batched && isTarget(op.DB) {
				coord.Crash() // right after the faulted batch
			}
		}
	}
	m, err := txmanager.New(coord.Resources(),
		txmanager.WithProtocol(proto),
		txmanager.WithLastResource(llr),
		txmanager.WithBatching(true),
		txmanager.WithAsyncCleanup(false),
		txmanager.WithClock(clock),
		txmanager.WithTimeout(modelTimeout),
		txmanager.WithDecideTimeout(modelDecide),
		txmanager.WithCommitTimeout(time.Second),
		txmanager.WithLogger(quiet),
		txmanager.WithFailpoints(hook),
		txmanager.WithSleep(func(ctx context.Context, d time.Duration) error {
			mu.Lock()
			dead := crashed
			mu.Unlock()
			if dead {
				return errCrashed
			}
			return nil
		}),
	)
	if err != nil {
		t.Fatal(err)
	}
	gtids := make([]string, txs)
	errs := make([]error, txs)
	var wg sync.WaitGroup
	for i := range txs {
		wg.Go(func() {
			errs[i] = m.Run(context.Background(), func(ctx context.Context, tx *txmanager.Tx) error {
				gtids[i] = tx.GTID()
				for _, n := range names {
					if _, err := tx.DB(n).ExecContext(ctx, "UPDATE"); err != nil {
						return err
					}
				}
				return nil
			})
		})
	}
	wg.Wait()
	if !faulted {
		t.Fatalf("the fault never hit a batch of several rows; trace:\n%s", strings.Join(world.Trace, "\n"))
	}
	if how == "refused" {
		// Nothing went in, each row went again alone: all commit.
		for i, err := range errs {
			if err != nil {
				t.Errorf("tx %d after a refused batch: %v, want committed", i, err)
			}
		}
	}
	// What each caller was told must be true now and stay true.
	for i, err := range errs {
		var claim memres.Claim
		switch {
		case err == nil:
			claim = memres.ClaimCommitted
		case errors.Is(err, txmanager.ErrAborted):
			claim = memres.ClaimAborted
		case errors.Is(err, txmanager.ErrCommitPending):
			claim = memres.ClaimCommitPending
		case errors.Is(err, txmanager.ErrInDoubt), errors.Is(err, txmanager.ErrHeuristic):
			continue
		default:
			t.Fatalf("tx %d: an error of no outcome class: %v", i, err)
		}
		if cerr := world.Claim("coordinator", gtids[i], claim); cerr != nil {
			t.Errorf("tx %d (%v): %v", i, err, cerr)
		}
	}
	if err := world.CheckInvariants(); err != nil {
		t.Fatalf("after the crash: %v", err)
	}
	for _, n := range names {
		world.Restart(n)
	}
	for i := range 3 {
		clock.Advance(modelRetention + modelHorizon)
		p := world.NewProc(fmt.Sprintf("final%d", i))
		s, err := recovery.New(p.Resources(), recovery.WithClock(clock), recovery.WithHorizon(modelHorizon),
			recovery.WithRetention(modelRetention), recovery.WithScanDeadline(modelScanDeadline),
			recovery.WithLogger(quiet), recovery.WithInstanceID(p.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.ScanOnce(context.Background()); err != nil {
			t.Fatalf("final scan: %v", err)
		}
		if err := world.CheckInvariants(); err != nil {
			t.Fatalf("after recovery: %v", err)
		}
	}
	if err := world.CheckFinal(); err != nil {
		t.Fatalf("after recovery: %v\ntrace:\n%s", err, strings.Join(world.Trace, "\n"))
	}
	outcomes := map[memres.Outcome]int{}
	for _, g := range gtids {
		outcomes[world.Outcome(g)]++
	}
	t.Logf("batch of %d rows crashed; outcomes after recovery %v; told %v", batched, outcomes, errs)
	return batched
}
