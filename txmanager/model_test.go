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
	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

// The model test runs the real coordinator and the real recovery scanner
// against in-memory databases (internal/memres), deterministically: the
// coordinator fans out one branch at a time, time is a manual clock, and
// every choice comes from a chooser: participants, protocol, read-only
// branches, faults injected into any operation of the coordinator or of a
// scanner (a connection lost before or after the operation took effect,
// a refusal, a by-id commit that answers OK and commits nothing, an
// outside actor's rollback of a prepared branch), where the coordinator
// crashes, and what happens while it runs: recovery scans (and clock
// jumps, past the horizon, every deadline or the retention) at any of its
// steps, server restarts, and horizon-0 scans whose steps interleave one
// database operation at a time with the coordinator's, its clean-up
// included, and run on after it returns.
//
// After every database operation the checker verifies the invariants of
// PROTOCOL.md (memres.World.CheckInvariants), and every outcome reported
// (the coordinator's return, each scan's per-transaction report) is
// checked against the real state at the moment it is reported
// (memres.World.Claim). At the end every database restarts (orphans
// reappear), a fault-free recovery runs with the clock past the
// retention, and every transaction must be all-committed or all-aborted
// (but where an outside actor rolled a branch back: its rows must stay),
// with nothing prepared and no marker, tombstone or evidence row left.

const (
	modelTimeout      = 10 * time.Second
	modelDecide       = 5 * time.Second
	modelHorizon      = 25 * time.Second // > the decision window: timeout + 2 decide timeouts
	modelRetention    = time.Hour
	modelScanDeadline = time.Minute
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

// scriptChooser answers by label (clamped to the range asked).
type scriptChooser func(label string) int

func (c scriptChooser) Int(label string, lo, hi int) int { return max(lo, min(hi, c(label))) }

// scenario fixes some choices up front (for exhaustive runs); zero fields
// are drawn from the chooser.
type scenario struct {
	n        int
	protocol txmanager.Protocol
	crashAt  txmanager.Failpoint // "" = draw; "none" = no crash
	crashK   int                 // crash at the crashK-th occurrence (1-based)
	llr      *bool               // logging last resource; nil = draw
	async    *bool               // asynchronous clean-up that never runs (left to recovery); nil = draw
	batch    *bool               // marker rows through the batcher (WithBatching); nil = draw
	// commitFirst: where the last branch's precommit row and commit
	// overlap (3PC, logging last resource, one branch besides the
	// primary), the commit runs first; nil = draw.
	commitFirst *bool
	faults      bool // draw faults for the operations of the coordinator and of the scans
	pauses      bool // draw what happens at the coordinator's steps (scans, clock jumps, restarts, ...)
	busy        bool // pauses twice as often, faults half as often
	// nonBlocking: check 3PC's non-blocking property (memres
	// CheckNonBlocking) after every operation of the coordinator; only for runs where the
	// coordinator runs alone and nothing fails but a crash.
	nonBlocking bool
}

// What may happen at one of the coordinator's steps (pauses).
const (
	actNone          = iota
	actScan          // a scan
	actScanLater     // the clock past the horizon, a scan
	actScanTwice     // the clock past every deadline, two scans
	actEagerScan     // a scan with horizon 0
	actInterleave    // a horizon-0 scan that interleaves with the coordinator
	actPastRetention // twice the clock past the retention and a scan (tombstones collected)
	actRestart       // the step's database restarts
	actOutside       // an outside actor rolls back the gtid's prepared branch at the step's database
	numActs
)

// Fault codes drawn for an operation.
const (
	fltNone = iota
	fltBefore
	fltAfter
	fltRefuse
	fltOrphan
	fltOutside
	numFaults
)

var faultOf = [numFaults]memres.Fault{memres.NoFault, memres.FailBefore, memres.FailAfter, memres.Refuse, memres.Orphan, memres.OutsideRollback}

// faultSpan is the range a fault code is drawn from for an operation: the
// codes above numFaults mean no fault.
func faultSpan(op memres.Op) int {
	switch {
	case op.Kind == "commit-with-marker":
		return 8 // its lost answer is the case the LLR self-fence exists for
	case op.Kind == "commit-prepared":
		return 14 // the by-id commit: where orphans are born
	case op.Proc == "coord":
		return 30
	}
	return 40
}

type result struct {
	violation string
	steps     int
	scenarios string // what the scenario was
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
	batch := c.Int("batching", 0, 1) == 1
	if sc.batch != nil {
		batch = *sc.batch
	}
	commitFirst := c.Int("commit-first", 0, 1) == 1
	if sc.commitFirst != nil {
		commitFirst = *sc.commitFirst
	}
	names := make([]string, n)
	writes := make([]bool, n)
	for i := range names {
		names[i] = fmt.Sprintf("db%d", i)
		writes[i] = c.Int("writes-"+names[i], 0, 4) > 0
	}
	crashAt, crashK := sc.crashAt, sc.crashK
	if crashAt == "" {
		i := c.Int("crash-at", 0, len(txmanager.Failpoints()))
		if i < len(txmanager.Failpoints()) {
			crashAt = txmanager.Failpoints()[i]
			crashK = c.Int("crash-k", 1, n)
		}
	}

	// The clock starts a second ahead of the gtid's wall-clock timestamp,
	// so that an eager scanner (horizon 0) sees the transaction as old.
	clock := memres.NewClock(time.Now().Add(time.Second))
	world := memres.NewWorld(clock, names...)
	coord := world.NewProc("coord")
	bt := newBaton(c)
	defer bt.close()
	actors := map[string]*actor{}

	var (
		mu        sync.Mutex
		violation string
		steps     int
		final     bool // the final recovery: no faults, no pauses
	)
	violate := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if violation == "" {
			violation = fmt.Sprintf("step %d: ", steps) + fmt.Sprintf(format, args...)
		}
	}
	var coordStep func(where, db string, failpoint, bounded bool)
	fencing := 0 // interleaved scans parked right before their fence insert
	world.AfterOp = func(op memres.Op) {
		mu.Lock()
		steps++
		mu.Unlock()
		if err := world.CheckInvariants(); err != nil {
			violate("after %v: %v", op, err)
		}
		if sc.nonBlocking && op.Proc == "coord" {
			if err := world.CheckNonBlocking(); err != nil {
				violate("after %v: %v", op, err)
			}
		}
		if op.Proc == "coord" && !final {
			// The coordinator may stall after an answer, before it acts
			// on it (and before it checks its clock).
			coordStep("after "+op.Kind+"@"+op.DB, op.DB, false, false)
		}
	}
	claim := func(who, gtid string, what memres.Claim, detail string) {
		if err := world.Claim(who, gtid, what); err != nil {
			violate("%v (%s)", err, detail)
		}
	}
	// claimReport checks what a scan reports about each transaction.
	claimReport := func(who string, rep *recovery.Report) {
		for _, t := range rep.Transactions {
			var what memres.Claim
			switch t.Action {
			case recovery.ActionCommit:
				if t.Resolved() {
					what = memres.ClaimCommitted
				}
			case recovery.ActionFence, recovery.ActionRollback:
				what = memres.ClaimAborted
			case recovery.ActionCollect:
				for name, m := range t.Markers {
					switch {
					case name == t.Primary && m.State == resource.StateAbort:
						what = memres.ClaimAborted
					case m.State == resource.StatePreCommit || m.State == resource.StateCommitted:
						if what == 0 {
							what = memres.ClaimCommitted
						}
					}
				}
			case recovery.ActionHeuristic:
				// Under an abort row a heuristic means a branch committed
				// anyway, which the invariants catch; otherwise the
				// transaction is decided and some branch really lacks its
				// evidence.
				if m, ok := t.Markers[t.Primary]; !ok || m.State != resource.StateAbort {
					what = memres.ClaimHeuristic
				}
			}
			if what != 0 {
				claim(who, t.GTID, what, fmt.Sprintf("scan action %s: %s (err %v)", t.Action, t.Reason, t.Err))
			}
		}
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	scanWith := func(p *memres.Proc, horizon time.Duration) {
		s, err := recovery.New(p.Resources(), recovery.WithClock(clock), recovery.WithHorizon(horizon),
			recovery.WithRetention(modelRetention), recovery.WithScanDeadline(modelScanDeadline),
			recovery.WithLogger(quiet), recovery.WithInstanceID(p.Name()), recovery.WithSequential())
		if err != nil {
			panic(err)
		}
		rep, err := s.ScanOnce(context.Background())
		if err == nil {
			claimReport(p.Name(), rep)
		}
	}
	scanners := 0
	scan := func(horizon time.Duration) {
		scanners++
		scanWith(world.NewProc(fmt.Sprintf("rec%d", scanners)), horizon)
	}

	var gtid string
	// coordStep is one of the coordinator's steps (a failpoint, or before
	// one of its database operations, at database db): it may hand the
	// baton to an interleaved scan, and something may happen meanwhile.
	//
	// Between checking its deadline and its decision (or self-fence)
	// reaching the primary, the coordinator may stall, but not for longer
	// than the retention: that is the design's one timing assumption
	// (PROTOCOL.md, "Tombstone retention"), so the clock never jumps past
	// the retention there (bounded marks such steps).
	coordStep = func(where, db string, failpoint, bounded bool) {
		bt.step(bt.coord, "sched coord "+where)
		if !sc.pauses || gtid == "" {
			return
		}
		span := 2 * numActs
		if !failpoint {
			span = 4 * numActs
		}
		if sc.busy {
			span /= 2
		}
		act := c.Int("pause "+where, 0, span-1)
		if act == actPastRetention && (bounded || fencing > 0) {
			act = actScanTwice
		}
		switch act {
		case actScan:
			scan(modelHorizon)
		case actScanLater:
			clock.Advance(modelHorizon + time.Second)
			scan(modelHorizon)
		case actScanTwice:
			clock.Advance(modelTimeout + 2*modelDecide + modelHorizon)
			scan(modelHorizon)
			scan(modelHorizon)
		case actEagerScan:
			scan(0)
		case actInterleave:
			if len(bt.live) >= 2 {
				break
			}
			scanners++
			p := world.NewProc(fmt.Sprintf("irec%d", scanners))
			a := bt.spawn(p.Name(), func(*actor) { scanWith(p, 0) })
			actors[p.Name()] = a
			bt.handTo(bt.coord, a)
		case actPastRetention:
			// Twice: the tombstone the first scan leaves is collected by
			// the second.
			for range 2 {
				clock.Advance(modelRetention + modelHorizon)
				scan(modelHorizon)
			}
		case actRestart:
			if db != "" {
				world.Restart(db)
			}
		case actOutside:
			if db != "" {
				world.RollbackOutside(db, gtid)
			}
		}
	}
	world.Fault = func(op memres.Op) memres.Fault {
		if final {
			return memres.NoFault
		}
		switch {
		case op.Proc == "coord":
			bounded := op.Kind == "commit-with-marker" || (op.Kind == "insert-marker" || op.Kind == "insert-markers") && op.DB == names[0]
			coordStep("before "+op.Kind+"@"+op.DB, op.DB, false, bounded)
		case strings.HasPrefix(op.Proc, "irec"):
			// A scan parked between its fence deadline check and its
			// fence reaching the primary is under the same timing
			// assumption as the coordinator (see coordStep).
			// (With the planted FenceWithoutDeadline there is no check,
			// so no assumption to honour.)
			fence := op.Kind == "insert-marker" && op.State == resource.StateAbort && !seeded.FenceWithoutDeadline.Load()
			if fence {
				fencing++
			}
			bt.step(actors[op.Proc], "sched "+op.Proc+" "+op.Kind+"@"+op.DB)
			if fence {
				fencing--
			}
		}
		if !sc.faults {
			return memres.NoFault
		}
		span := faultSpan(op)
		if sc.busy {
			span *= 2
		}
		f := c.Int(fmt.Sprintf("fault %s %s@%s", op.Proc, op.Kind, op.DB), 0, span-1)
		if f >= numFaults {
			return memres.NoFault
		}
		return faultOf[f]
	}

	crashed := false
	seen := map[txmanager.Failpoint]int{}
	hook := func(_ context.Context, fp txmanager.Failpoint, _, res string) error {
		if crashed {
			return errCrashed
		}
		seen[fp]++
		if fp == crashAt && seen[fp] == crashK {
			coord.Crash()
			crashed = true
			return errCrashed
		}
		coordStep(fmt.Sprintf("%s#%d", fp, seen[fp]), res, true, fp == txmanager.BeforeDecide)
		return nil
	}

	m, err := txmanager.New(coord.Resources(),
		txmanager.WithProtocol(protocol),
		txmanager.WithLastResource(llr),
		txmanager.WithAsyncCleanup(async),
		txmanager.WithBatching(batch),
		txmanager.WithPausedCleaner(),
		txmanager.WithClock(clock),
		txmanager.WithTimeout(modelTimeout),
		txmanager.WithDecideTimeout(modelDecide),
		txmanager.WithCommitTimeout(2*time.Second),
		txmanager.WithLogger(quiet),
		txmanager.WithFailpoints(hook),
		txmanager.WithSequential(),
		txmanager.WithCommitFirst(func() bool { return commitFirst }),
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
	gtid = tx.GTID()
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
	// What the coordinator told its caller must be true now (and, for an
	// abort, forever).
	switch {
	case crashed:
	case workErr != nil:
		claim("coordinator", gtid, memres.ClaimAborted, fmt.Sprintf("Rollback: %v", commitErr))
	case commitErr == nil:
		claim("coordinator", gtid, memres.ClaimCommitted, "Commit: nil")
	case errors.Is(commitErr, txmanager.ErrHeuristic):
		claim("coordinator", gtid, memres.ClaimHeuristic, fmt.Sprintf("Commit: %v", commitErr))
	case errors.Is(commitErr, txmanager.ErrCommitPending):
		claim("coordinator", gtid, memres.ClaimCommitPending, fmt.Sprintf("Commit: %v", commitErr))
	case errors.Is(commitErr, txmanager.ErrAborted):
		claim("coordinator", gtid, memres.ClaimAborted, fmt.Sprintf("Commit: %v", commitErr))
	case errors.Is(commitErr, txmanager.ErrInDoubt):
	default:
		violate("the coordinator returned an error of no outcome class: %v", commitErr)
	}
	// Something may happen after the coordinator returned, too (the
	// clock past the retention, while an interleaved scan is parked).
	coordStep("returned", "", true, false)
	bt.drain() // the interleaved scans run on after the coordinator returned

	if sc.faults {
		// One more scan with faults, once the transaction is old.
		clock.Advance(modelTimeout + 2*modelDecide + modelHorizon)
		scan(modelHorizon)
	}
	// Final recovery: every server restarts (orphans reappear), everything
	// reachable, no faults, the clock past every deadline and the
	// retention before each scan.
	final = true
	for _, n := range names {
		world.Restart(n)
	}
	for i := 0; i < 3; i++ {
		clock.Advance(modelRetention + modelHorizon)
		scanWith(world.NewProc(fmt.Sprintf("final%d", i)), modelHorizon)
	}
	if err := world.CheckInvariants(); err != nil {
		violate("after final recovery: %v", err)
	}
	if err := world.CheckFinal(); err != nil {
		violate("after final recovery: %v", err)
	}

	mu.Lock()
	defer mu.Unlock()
	return result{
		violation: violation,
		steps:     steps,
		scenarios: fmt.Sprintf("n=%d %s llr=%v async=%v writes=%v crash=%s#%d coordinator said: %v", n, protocol, llr, async, writes, crashAt, crashK, commitErr),
		trace:     strings.Join(world.Trace, "\n"),
	}
}

var errCrashed = errors.New("model: coordinator crashed")

func (r result) String() string {
	return fmt.Sprintf("%s\n%s\ntrace:\n%s", r.violation, r.scenarios, r.trace)
}

// TestModelRapid explores random scenarios: 2 to 5 participants, both
// protocols, read-only branches, every fault before and after any
// operation, a crash at any failpoint, and scans, clock jumps, restarts
// and outside rollbacks at any of the coordinator's steps.
func TestModelRapid(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		r := scenario{faults: true, pauses: true}.run(rapidChooser{rt})
		if r.violation != "" {
			rt.Fatal(r.String())
		}
	})
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
			t.Fatalf("seed %d: %s", seed, r)
		}
	}
}
