package txmanager_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/threepc/threepc/internal/memres"
	"github.com/threepc/threepc/internal/seeded"
	"github.com/threepc/threepc/recovery"
	"github.com/threepc/threepc/txmanager"
)

// The model test runs the real coordinator and the real recovery scanner
// against in-memory databases (internal/memres), deterministically: the
// coordinator fans out one branch at a time, time is a manual clock, and
// every choice (participants, protocol, read-only branches, injected
// faults, where the coordinator crashes, where it pauses while recovery
// scanners run and the clock jumps) comes from a chooser. After every
// database operation the invariants of PROTOCOL.md are checked; at the end
// a fault-free recovery must leave every transaction all-committed or
// all-aborted, with nothing prepared and no marker row, and consistent
// with what the coordinator told its caller.

const (
	modelTimeout = 10 * time.Second
	modelDecide  = 5 * time.Second
	modelHorizon = 20 * time.Second // > timeout + decide
)

// chooser supplies the scenario's choices.
type chooser interface {
	Int(label string, lo, hi int) int
}

type rapidChooser struct{ t *rapid.T }

func (c rapidChooser) Int(label string, lo, hi int) int {
	return rapid.IntRange(lo, hi).Draw(c.t, label)
}

type randChooser struct{ r *rand.Rand }

func (c randChooser) Int(_ string, lo, hi int) int { return lo + c.r.IntN(hi-lo+1) }

// scenario fixes some choices up front (for exhaustive runs); nil fields
// are drawn from the chooser.
type scenario struct {
	n        int
	protocol txmanager.Protocol
	crashAt  txmanager.Failpoint // "" = draw; "none" = no crash
	crashK   int                 // crash at the crashK-th occurrence (1-based)
	llr      *bool               // logging last resource; nil = draw
	async    *bool               // asynchronous clean-up that never runs (left to recovery); nil = draw
	faults   bool                // inject faults into the coordinator's operations
	pauses   bool                // run recovery (and jump the clock) at failpoints
}

type result struct {
	violation string
	steps     int
	trace     string
}

// run plays one scenario and returns the first violation found, if any.
func (sc scenario) run(c chooser) result {
	n := sc.n
	if n == 0 {
		n = c.Int("participants", 2, 5)
	}
	protocol := sc.protocol
	if protocol == "" {
		protocol = []txmanager.Protocol{txmanager.ThreePC, txmanager.TwoPC}[c.Int("protocol", 0, 1)]
	}
	llr := c.Int("last-resource", 0, 1) == 1
	if sc.llr != nil {
		llr = *sc.llr
	}
	async := c.Int("async-cleanup", 0, 1) == 1
	if sc.async != nil {
		async = *sc.async
	}
	names := make([]string, n)
	writes := make([]bool, n)
	for i := range names {
		names[i] = fmt.Sprintf("db%d", i)
		writes[i] = c.Int("writes-"+names[i], 0, 4) > 0
	}
	crashAt, crashK := sc.crashAt, sc.crashK
	if crashAt == "" {
		i := c.Int("crash-at", 0, len(txmanager.Failpoints))
		if i < len(txmanager.Failpoints) {
			crashAt = txmanager.Failpoints[i]
			crashK = c.Int("crash-k", 1, n)
		}
	}

	// The clock starts a second ahead of the gtid's wall-clock timestamp,
	// so that an eager scanner (horizon 0) sees the transaction as old.
	clock := memres.NewClock(time.Now().Add(time.Second))
	world := memres.NewWorld(clock, names...)
	coord := world.NewProc("coord")

	var (
		mu        sync.Mutex
		violation string
		steps     int
	)
	check := func(where string) {
		mu.Lock()
		defer mu.Unlock()
		steps++
		if violation != "" {
			return
		}
		if err := world.CheckInvariants(); err != nil {
			violation = fmt.Sprintf("after %s (step %d): %v", where, steps, err)
		}
	}
	world.AfterOp = func(op memres.Op) { check(op.String()) }
	faultsOn := sc.faults
	// An interleaved scan runs in its own goroutine and hands control back
	// and forth with the coordinator: exactly one of them runs at a time
	// (the baton), so every choice is still drawn in a fixed order.
	var (
		toCoord    = make(chan struct{})
		toScan     = make(chan struct{})
		scanning   bool // an interleaved scan is parked, waiting for its turn
		coordDone  bool
		yields     map[int]int // before its i-th operation, the scan yields for this many coordinator steps
		scanOps    int
		coordSteps int // coordinator steps left before the baton goes back to the scan
	)
	world.Fault = func(op memres.Op) memres.Fault {
		if strings.HasPrefix(op.Proc, "irec") {
			// The yields were drawn up front: the chooser is only ever used
			// from the test's goroutine.
			steps := yields[scanOps]
			scanOps++
			if !coordDone && steps > 0 {
				coordSteps = steps
				toCoord <- struct{}{}
				<-toScan
			}
			return memres.NoFault
		}
		if !faultsOn || op.Proc != "coord" {
			return memres.NoFault
		}
		switch c.Int("fault "+op.Kind, 0, 24) {
		case 0:
			return memres.FailBefore
		case 1:
			return memres.FailAfter
		case 2:
			return memres.Refuse
		}
		return memres.NoFault
	}

	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	scanners := 0
	scanWith := func(p *memres.Proc, horizon time.Duration) {
		sc, err := recovery.New(p.Resources(), recovery.WithClock(clock), recovery.WithHorizon(horizon),
			recovery.WithRetention(time.Hour), recovery.WithLogger(quiet), recovery.WithInstanceID(p.Name()),
			recovery.WithSequential())
		if err != nil {
			panic(err)
		}
		_, _ = sc.ScanOnce(context.Background())
	}
	scan := func(p *memres.Proc) { scanWith(p, modelHorizon) }
	// yieldToScan gives the baton to a parked interleaved scan until it
	// parks again or ends.
	yieldToScan := func() {
		for scanning {
			toScan <- struct{}{}
			<-toCoord
			if !coordDone {
				return
			}
		}
	}

	crashed := false
	seen := map[txmanager.Failpoint]int{}
	hook := func(_ context.Context, fp txmanager.Failpoint, _, _ string) error {
		if scanning {
			if coordSteps--; coordSteps <= 0 {
				yieldToScan()
			}
		}
		if crashed {
			return errCrashed
		}
		seen[fp]++
		if fp == crashAt && seen[fp] == crashK {
			coord.Crash()
			crashed = true
			return errCrashed
		}
		if !sc.pauses {
			return nil
		}
		// The coordinator is paused here while recovery runs.
		switch c.Int(fmt.Sprintf("pause %s#%d", fp, seen[fp]), 0, 9) {
		case 1:
			scanners++
			scan(world.NewProc(fmt.Sprintf("rec%d", scanners)))
		case 2:
			clock.Advance(modelHorizon + time.Second)
			scanners++
			scan(world.NewProc(fmt.Sprintf("rec%d", scanners)))
		case 3:
			// Two scanners, one after the other, past every deadline.
			clock.Advance(modelTimeout + modelDecide + modelHorizon)
			scanners += 2
			scan(world.NewProc(fmt.Sprintf("rec%d", scanners-1)))
			scan(world.NewProc(fmt.Sprintf("rec%d", scanners)))
		case 4:
			// An eager scanner (horizon 0), as a peer with a fast clock or
			// an impatient configuration would run.
			scanners++
			scanWith(world.NewProc(fmt.Sprintf("rec%d", scanners)), 0)
		case 5, 6:
			if scanning {
				break
			}
			// An eager scanner (horizon 0) whose steps interleave with the
			// coordinator's: it may stop before any of its operations and
			// let the coordinator run to its next step.
			scanners++
			p := world.NewProc(fmt.Sprintf("irec%d", scanners))
			// Two yield points: before which of its operations (listing
			// every resource's markers and branches takes 2n), and for how
			// many coordinator steps.
			yields, scanOps = map[int]int{}, 0
			for i := 0; i < 2; i++ {
				at := c.Int(fmt.Sprintf("scan %d yield %d before op", scanners, i), 0, 3*n+3)
				yields[at] = c.Int(fmt.Sprintf("scan %d yield %d steps", scanners, i), 1, 6)
			}
			scanning = true
			go func() {
				scanWith(p, 0)
				scanning = false
				toCoord <- struct{}{}
			}()
			<-toCoord
		}
		return nil
	}

	m, err := txmanager.New(coord.Resources(),
		txmanager.WithProtocol(protocol),
		txmanager.WithLastResource(llr),
		txmanager.WithAsyncCleanup(async),
		txmanager.WithPausedCleaner(),
		txmanager.WithClock(clock),
		txmanager.WithTimeout(modelTimeout),
		txmanager.WithDecideTimeout(modelDecide),
		txmanager.WithCommitTimeout(2*time.Second),
		txmanager.WithLogger(quiet),
		txmanager.WithFailpoints(hook),
		txmanager.WithSequential(),
		txmanager.WithSleep(func(_ context.Context, d time.Duration) error { clock.Advance(d); return nil }),
	)
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	tx, err := m.Begin(ctx)
	if err != nil {
		panic(err)
	}
	workErr := error(nil)
	for i, name := range names {
		if writes[i] {
			_, err = tx.DB(name).ExecContext(ctx, "UPDATE")
		} else {
			var x int
			err = tx.DB(name).QueryRowContext(ctx, "SELECT").Scan(&x)
			if strings.Contains(fmt.Sprint(err), "no SQL") {
				err = nil
			}
		}
		if err != nil {
			workErr = err
			break
		}
	}
	var commitErr error
	if workErr != nil {
		commitErr = tx.Rollback(ctx)
	} else {
		commitErr = tx.Commit(ctx)
	}
	coordDone = true
	yieldToScan() // let a parked scan finish

	// Final recovery: everything reachable, no faults, every deadline and
	// the abort rows' retention long past.
	faultsOn = false
	clock.Advance(2 * time.Hour)
	for i := 0; i < 2; i++ {
		scan(world.NewProc(fmt.Sprintf("final%d", i)))
	}

	mu.Lock()
	defer mu.Unlock()
	res := result{violation: violation, steps: steps, trace: worldTrace(world)}
	if res.violation != "" {
		return res
	}
	fail := func(format string, args ...any) result {
		res.violation = fmt.Sprintf(format, args...)
		return res
	}
	if err := world.CheckClean(); err != nil {
		return fail("after final recovery: %v", err)
	}
	out := world.Outcome(tx.GTID())
	if out == memres.Mixed || out == memres.Unfinished {
		return fail("outcome %v", out)
	}
	if crashed || workErr != nil {
		return res
	}
	switch {
	case commitErr == nil, errors.Is(commitErr, txmanager.ErrCommitPending):
		if out != memres.AllCommitted && out != memres.Empty {
			return fail("coordinator said %v, outcome %v", commitErr, out)
		}
	case errors.Is(commitErr, txmanager.ErrAborted):
		if out != memres.AllAborted && out != memres.Empty {
			return fail("coordinator said %v, outcome %v", commitErr, out)
		}
	case errors.Is(commitErr, txmanager.ErrInDoubt):
	default:
		return fail("coordinator returned an error of no outcome class: %v", commitErr)
	}
	return res
}

var errCrashed = errors.New("model: coordinator crashed")

func worldTrace(w *memres.World) string { return strings.Join(w.Trace, "\n") }

// TestModelRapid explores random scenarios: 2 to 5 participants, both
// protocols, read-only branches, faults before and after any coordinator
// operation, a crash at any failpoint, recovery scanners (and clock jumps)
// while the coordinator is paused at any failpoint.
func TestModelRapid(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		r := scenario{faults: true, pauses: true}.run(rapidChooser{rt})
		if r.violation != "" {
			rt.Fatalf("%s\ntrace:\n%s", r.violation, r.trace)
		}
	})
}

// TestModelEveryCrashPoint crashes the coordinator at every occurrence of
// every failpoint, for 2 to 5 participants and both protocols, then runs
// recovery: exhaustive over crash points, with and without the
// logging-last-resource optimization and asynchronous clean-up, with no
// other fault.
func TestModelEveryCrashPoint(t *testing.T) {
	cases := 0
	for n := 2; n <= 5; n++ {
		for _, p := range []txmanager.Protocol{txmanager.ThreePC, txmanager.TwoPC} {
			for opts := range 4 {
				llr, async := opts&1 == 1, opts&2 == 2
				for _, fp := range txmanager.Failpoints {
					for k := 1; k <= n; k++ {
						sc := scenario{n: n, protocol: p, crashAt: fp, crashK: k, llr: &llr, async: &async}
						// Every branch writes: the chooser answers 1 to every draw.
						r := sc.run(constChooser(1))
						if r.violation != "" {
							t.Fatalf("n=%d %s llr=%v async=%v crash at %s#%d: %s\ntrace:\n%s", n, p, llr, async, fp, k, r.violation, r.trace)
						}
						cases++
					}
				}
			}
		}
	}
	t.Logf("%d crash scenarios", cases)
}

type constChooser int

func (c constChooser) Int(_ string, lo, hi int) int { return max(lo, min(hi, int(c))) }

// TestModelSeededBugs proves the checker's power: each planted protocol
// bug must be caught by a random search.
func TestModelSeededBugs(t *testing.T) {
	bugs := []struct {
		name string
		flag interface{ Store(bool) }
	}{
		{"abort without fence", &seeded.AbortWithoutFence},
		{"abort rows deleted before the coordinator's deadline", &seeded.EarlyAbortCleanup},
		{"precommit rows before the primary's decision", &seeded.EarlyPreCommit},
		{"markers collected after a fence lost to a late decision", &seeded.CollectAfterLateDecision},
	}
	for _, bug := range bugs {
		t.Run(bug.name, func(t *testing.T) {
			bug.flag.Store(true)
			defer bug.flag.Store(false)
			for seed := uint64(0); seed < 20000; seed++ {
				c := randChooser{rand.New(rand.NewPCG(seed, 7))}
				r := scenario{faults: true, pauses: true}.run(c)
				if r.violation != "" {
					t.Logf("caught after %d scenarios (%d steps): %s\ntrace:\n%s", seed+1, r.steps, r.violation, r.trace)
					return
				}
			}
			t.Fatalf("the checker never caught the planted bug %q", bug.name)
		})
	}
}

// TestModelSweep runs many more random scenarios than rapid's default,
// from fixed seeds (reproducible by seed).
func TestModelSweep(t *testing.T) {
	n := uint64(5000)
	if testing.Short() {
		n = 500
	}
	for seed := uint64(0); seed < n; seed++ {
		r := scenario{faults: true, pauses: true}.run(randChooser{rand.New(rand.NewPCG(seed, 11))})
		if r.violation != "" {
			t.Fatalf("seed %d: %s\ntrace:\n%s", seed, r.violation, r.trace)
		}
	}
}
