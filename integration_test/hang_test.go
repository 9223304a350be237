package integration_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/threepc/threepc/drivers"
	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/integration_test/internal/faultproxy"
	"github.com/threepc/threepc/recovery"
	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

// The coordinator's timeouts in the hang tests: short, so that a hung
// connection costs about a second per case.
const (
	hangTimeout = 1500 * time.Millisecond // transaction timeout: work and vote
	hangDecide  = time.Second             // decide timeout, after the transaction timeout
	hangCommit  = time.Second             // commit timeout (pre-commit, commit, rollback)
	hangCleanup = time.Second             // clean-up timeout
	hangScan    = 1500 * time.Millisecond // the caller's bound on one recovery scan
	// hangSlack is what a timeout may overrun its bound by: the race
	// detector, two loaded cores, and the rollback or close that follows
	// a timeout on a connection that no longer answers.
	hangSlack = time.Second
)

// hangPhase is the moment at which one database's connections stop
// forwarding, and the bounds the coordinator must then keep.
type hangPhase struct {
	name string
	fp   txmanager.Failpoint // "" for the work phase: the hang starts between two statements
	llr  bool                // logging last resource: the primary commits one-phase with its decision row
	// abs bounds Run's duration from its start (0: no absolute bound);
	// after bounds it from the moment of the hang.
	abs, after func(victimIsPrimary bool) time.Duration
	// want lists the outcomes the coordinator may report.
	want func(victimIsPrimary bool) []outcome
}

func hangPhases() []hangPhase {
	none := func(bool) time.Duration { return 0 }
	return []hangPhase{
		{
			// The statement waits until the transaction timeout cancels
			// it; then the rollback, bounded by the commit timeout.
			name: "work",
			abs:  func(bool) time.Duration { return hangTimeout + hangCommit }, after: none,
			want: func(bool) []outcome { return []outcome{outWorkFailed} },
		},
		{
			name: "vote", fp: txmanager.BeforePrepare,
			abs: func(bool) time.Duration { return hangTimeout + hangCommit }, after: none,
			want: func(bool) []outcome { return []outcome{outAborted} },
		},
		{
			// At the primary the decision insert waits until the decision
			// deadline (transaction timeout + decide timeout): in doubt.
			// Elsewhere the decision is made; pre-commit and commit then
			// wait for their commit timeout each.
			name: "decide", fp: txmanager.BeforeDecide,
			abs: func(primary bool) time.Duration {
				if primary {
					return hangTimeout + hangDecide
				}
				return 0
			},
			after: func(primary bool) time.Duration {
				if primary {
					return 0
				}
				return 2 * hangCommit
			},
			want: func(primary bool) []outcome {
				if primary {
					return []outcome{outInDoubt}
				}
				return []outcome{outPending}
			},
		},
		{
			// Logging last resource, the primary hanging: its commit (the
			// decision) waits until the decision deadline, then the
			// coordinator's self-fence until one more decide timeout: in
			// doubt, or aborted if the fence got in. The held COMMIT and
			// fence arrive together at the heal; the gtid's primary key
			// lets one of them win.
			name: "decide-llr", fp: txmanager.BeforeDecide, llr: true,
			abs: func(bool) time.Duration { return hangTimeout + 2*hangDecide }, after: none,
			want: func(bool) []outcome { return []outcome{outInDoubt, outAborted} },
		},
		{
			name: "precommit", fp: txmanager.BeforePreCommit, abs: none,
			after: func(bool) time.Duration { return 2 * hangCommit },
			want:  func(bool) []outcome { return []outcome{outPending} },
		},
		{
			name: "commit", fp: txmanager.BeforeCommit, abs: none,
			after: func(bool) time.Duration { return hangCommit },
			want:  func(bool) []outcome { return []outcome{outPending} },
		},
		{
			// Every branch is committed: the clean-up gives up after its
			// timeout and leaves the rows to recovery; the caller hears
			// "committed".
			name: "cleanup", fp: txmanager.BeforeCleanup, abs: none,
			after: func(bool) time.Duration { return hangCleanup },
			want:  func(bool) []outcome { return []outcome{outCommitted} },
		},
	}
}

// proxied opens a resource on p whose connections go through a new fault
// proxy; both are closed at the end of the test.
func proxied(t *testing.T, p part) (*faultproxy.Proxy, resource.Resource) {
	t.Helper()
	px, err := faultproxy.New(p.srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { px.Close() })
	r, err := drivers.Open(p.name, strings.Replace(p.url(), p.srv.Addr(), px.Addr(), 1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resource.Close(r) })
	return px, r
}

// TestHangingConnections makes the connections to one database hang (no
// reset: bytes held or dropped, in one direction or both) during each
// phase of a 3PC transaction (and of the logging-last-resource decision),
// and checks that every timeout fires within
// its bound, that the outcome reported is the real one once recovery has
// run, and that recovery leaves nothing behind. Held bytes are delivered
// when the fault heals, after the coordinator gave up on them: the late
// statements of a stale actor.
func TestHangingConnections(t *testing.T) {
	pg := harness.Shared(t, harness.Postgres)
	my := harness.Shared(t, harness.MariaDB)
	ps := []part{newPart(t, pg, "hang_pg", crashTable), newPart(t, my, "hang_my", crashTable)}
	dirs := []faultproxy.Direction{faultproxy.ToServer, faultproxy.ToClient, faultproxy.Both}
	i := 0
	type hangCase struct {
		ph        hangPhase
		victim    int
		dir       faultproxy.Direction
		blackhole bool
	}
	// Directions and modes rotate over the phases and databases, so each
	// combination is met, in about twenty seconds; the decision at the
	// primary, where the coordinator is left in doubt, gets every
	// direction.
	var cases []hangCase
	for _, ph := range hangPhases() {
		for victim := range ps {
			if ph.llr && victim != 0 {
				continue // only the primary's hang matters to the last resource
			}
			rotated := dirs[i%3]
			cases = append(cases, hangCase{ph, victim, rotated, i%2 == 1})
			i++
			if ph.fp == txmanager.BeforeDecide && victim == 0 {
				for _, d := range dirs {
					if d != rotated {
						cases = append(cases, hangCase{ph, victim, d, false})
					}
				}
			}
		}
	}
	for _, c := range cases {
		mode := "stall"
		if c.blackhole {
			mode = "blackhole"
		}
		name := fmt.Sprintf("%s/%s/%s-%s", c.ph.name, ps[c.victim].name, mode, c.dir)
		t.Run(name, func(t *testing.T) {
			runHangCase(t, ps, c.ph, c.victim, c.dir, c.blackhole, strings.ReplaceAll(name, "/", "."))
		})
	}
	t.Run("recovery-scan", func(t *testing.T) { hangScanCases(t, ps) })
}

// TestScanRunWhileDatabaseHangs runs the background scanner
// (Scanner.Run, with a context that never ends, as a service or the
// recover command would) while one database hangs: its scans must still
// end, by the scan deadline, and report the database unreachable;
// otherwise one silent database stops recovery for every other one too.
// Through a real network the hang lasts until TCP gives up on the
// unacknowledged request (tcp_retries2: about 15 minutes); through the
// proxy, whose kernel acknowledges everything, it lasts forever.
func TestScanRunWhileDatabaseHangs(t *testing.T) {
	pg := harness.Shared(t, harness.Postgres)
	my := harness.Shared(t, harness.MariaDB)
	ps := []part{newPart(t, pg, "hangrun_pg", crashTable), newPart(t, my, "hangrun_my", crashTable)}
	const deadline = 2 * time.Second
	pxs := make([]*faultproxy.Proxy, len(ps))
	rs := make([]resource.Resource, len(ps))
	for i, p := range ps {
		pxs[i], rs[i] = proxied(t, p)
	}
	sc, err := recovery.New(rs, recovery.WithHorizon(0), recovery.WithLogger(quiet), recovery.WithScanDeadline(deadline))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sc.ScanOnce(testCtx(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	pxs[0].Stall(faultproxy.Both)
	ctx, cancel := context.WithCancel(context.Background())
	reports := make(chan *recovery.Report, 16)
	done := make(chan struct{})
	t0 := time.Now()
	go func() {
		defer close(done)
		_ = sc.Run(ctx, 100*time.Millisecond, func(rep *recovery.Report) {
			select {
			case reports <- rep:
			default:
			}
		})
	}()
	defer func() {
		cancel()
		pxs[0].Heal()
		<-done
	}()
	select {
	case rep := <-reports:
		elapsed := time.Since(t0)
		t.Logf("first scan with %s hung: %v, unreachable %v", ps[0].name, elapsed.Round(time.Millisecond), rep.Unreachable)
		if elapsed > deadline+hangSlack {
			t.Errorf("the scan took %v, its deadline is %v (+%v slack)", elapsed.Round(time.Millisecond), deadline, hangSlack)
		}
		if rep.Unreachable[ps[0].name] == nil {
			t.Errorf("the scan reports %s reachable while it hangs", ps[0].name)
		}
	case <-time.After(deadline + 5*time.Second):
		t.Errorf("Scanner.Run (scan deadline %v) delivered no report within %v while %s hangs: a scan has no time bound of its own, only the caller's context (WithScanDeadline only stops it fencing), so one silent database blocks the recovery of every other", deadline, deadline+5*time.Second, ps[0].name)
	}
}

func runHangCase(t *testing.T, ps []part, ph hangPhase, victim int, dir faultproxy.Direction, blackhole bool, key string) {
	ctx := testCtx(t, time.Minute)
	pxs := make([]*faultproxy.Proxy, len(ps))
	rs := make([]resource.Resource, len(ps))
	for i, p := range ps {
		pxs[i], rs[i] = proxied(t, p)
	}
	var (
		mu       sync.Mutex
		armed    bool
		start    time.Time
		hungAt   time.Duration // since start; -1 until the hang
		injected bool
	)
	hang := func() {
		mu.Lock()
		defer mu.Unlock()
		if !armed || injected {
			return
		}
		injected, hungAt = true, time.Since(start)
		if blackhole {
			pxs[victim].Blackhole(dir)
		} else {
			pxs[victim].Stall(dir)
		}
	}
	hook := func(ctx context.Context, fp txmanager.Failpoint, gtid, res string) error {
		perBranch := fp == txmanager.BeforePrepare || fp == txmanager.BeforeCommit
		if ph.fp != "" && fp == ph.fp && (!perBranch || res == ps[victim].name) {
			hang()
		}
		return nil
	}
	m, err := txmanager.New(rs, txmanager.WithLastResource(false), txmanager.WithAsyncCleanup(false), txmanager.WithProtocol(txmanager.ThreePC), txmanager.WithFailpoints(hook),
		txmanager.WithTimeout(hangTimeout), txmanager.WithDecideTimeout(hangDecide),
		txmanager.WithCommitTimeout(hangCommit), txmanager.WithCleanupTimeout(hangCleanup),
		txmanager.WithLastResource(ph.llr), txmanager.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	insert := func(ctx context.Context, tx *txmanager.Tx, key string) error {
		for _, r := range rs {
			if _, err := tx.DB(r.Name()).ExecContext(ctx, "INSERT INTO crash_rows (k) VALUES ("+ph1(r)+")", key); err != nil {
				return workError{err}
			}
		}
		return nil
	}
	// Two transactions first, so that both connections of each pool (the
	// branch's and the marker statements') are established and have
	// their statements prepared: a hung statement is then sent at once,
	// and with the answers held, executed (a decision row inserted whose
	// acknowledgement never comes), not stuck in a handshake.
	for w := range 2 {
		if err := m.Run(ctx, func(ctx context.Context, tx *txmanager.Tx) error {
			return insert(ctx, tx, fmt.Sprintf("%s-warm%d", key, w))
		}); err != nil {
			t.Fatalf("warm-up transaction: %v", err)
		}
	}
	var gtid string
	mu.Lock()
	armed = true
	mu.Unlock()
	start = time.Now()
	err = m.Run(ctx, func(ctx context.Context, tx *txmanager.Tx) error {
		gtid = tx.GTID()
		if err := insert(ctx, tx, key); err != nil {
			return err
		}
		if ph.fp == "" {
			hang()
			r := rs[victim]
			if _, err := tx.DB(r.Name()).ExecContext(ctx, "UPDATE crash_rows SET k = k WHERE k = "+ph1(r), key); err != nil {
				return workError{err}
			}
		}
		return nil
	})
	elapsed := time.Since(start)
	o := classify(err)
	mu.Lock()
	wasHung, at := injected, hungAt
	mu.Unlock()
	t.Logf("%s: reported %s after %v (hang at %v): %v", gtid, outcomeNames[o], elapsed.Round(time.Millisecond), at.Round(time.Millisecond), err)
	if !wasHung {
		t.Fatalf("the failpoint %s never fired for %s: the hang was not injected", ph.fp, ps[victim].name)
	}
	primary := victim == 0
	if b := ph.abs(primary); b > 0 && elapsed > b+hangSlack {
		t.Errorf("Run took %v, bound %v (+%v slack)", elapsed.Round(time.Millisecond), b, hangSlack)
	}
	if b := ph.after(primary); b > 0 && elapsed-at > b+hangSlack {
		t.Errorf("Run took %v after the hang, bound %v (+%v slack)", (elapsed - at).Round(time.Millisecond), b, hangSlack)
	}
	if want := ph.want(primary); !containsOutcome(want, o) {
		t.Errorf("reported %s, want one of %s: %v", outcomeNames[o], outcomeList(want), err)
	}

	// Stalled bytes are held: recovery runs first, over direct
	// connections, while the coordinator is still cut off (on MariaDB a
	// branch may still be attached to its hung session), and the held
	// statements land after it, late: the pre-commit row, the commit or
	// the fence of a stale actor. Blackholed bytes are gone: heal first.
	var early *scanStats
	if !blackhole {
		var rs []resource.Resource
		for _, p := range ps {
			r, err := drivers.Open(p.name, p.url())
			if err != nil {
				t.Fatal(err)
			}
			rs = append(rs, r)
		}
		early = recoverFresh(t, rs, 20*time.Second)
		for _, r := range rs {
			resource.Close(r) // WaitIdle below counts its sessions too
		}
		if len(early.badErrs) > 0 {
			t.Errorf("recovery errors while the coordinator hangs: %v", early.badErrs)
		}
	}
	// Heal: held bytes arrive now. Then close every connection of the
	// coordinator and wait until the servers have ended its sessions, so
	// that recovery sees whatever the late bytes did.
	dropped := pxs[victim].Heal()
	_ = m.Close(ctx)
	for i, r := range rs {
		_ = resource.Close(r)
		if err := ps[i].srv.WaitIdle(testCtx(t, 15*time.Second), ps[i].db); err != nil {
			t.Fatalf("after the heal: %v", err)
		}
	}
	// Opened only now: WaitIdle counts every session on the database.
	direct := openAll(t, ps)
	st := recoverFresh(t, direct, 20*time.Second)
	if len(st.badErrs) > 0 {
		t.Errorf("recovery errors: %v", st.badErrs)
	}
	in := make([]int, len(direct))
	for i, r := range direct {
		in[i] = count(t, ctx, r, "SELECT COUNT(*) FROM crash_rows WHERE k = "+ph1(r), key)
	}
	var actions []string
	for _, h := range st.history[gtid] {
		actions = append(actions, h[strings.Index(h, "action="):min(len(h), strings.Index(h, "action=")+40)])
	}
	t.Logf("after recovery (%d scans, %d bytes dropped): rows %v; recovery of %s: %v", st.scans, dropped, in, gtid, actions)
	switch {
	case in[0] != in[1]:
		t.Errorf("MIXED OUTCOME: rows %v in %s, %s (reported %s)", in, direct[0].Name(), direct[1].Name(), outcomeNames[o])
	case (o == outCommitted || o == outPending) && in[0] == 0:
		t.Errorf("reported %s, but the rows are in neither database", outcomeNames[o])
	case (o == outAborted || o == outWorkFailed) && in[0] == 1:
		t.Errorf("reported %s, but the rows are in both databases", outcomeNames[o])
	}
	checkClean(t, ctx, direct)
	if early != nil {
		var first []string
		for _, h := range early.history[gtid] {
			first = append(first, h[strings.Index(h, "action="):min(len(h), strings.Index(h, "action=")+40)])
		}
		t.Logf("recovery while the coordinator hung (%d scans): %v", early.scans, first)
		// Rows a late statement left must be collected like any other.
		collectAborts(t, direct)
	}
}

// hangScanCases hangs one database under a recovery scan: ScanOnce must
// return by the caller's deadline, with the hung database reported
// unreachable (or an error), and resolve the transactions it can reach.
func hangScanCases(t *testing.T, ps []part) {
	dirs := []faultproxy.Direction{faultproxy.ToClient, faultproxy.Both}
	for victim := range ps {
		dir := dirs[victim]
		t.Run(fmt.Sprintf("%s/stall-%s", ps[victim].name, dir), func(t *testing.T) {
			pxs := make([]*faultproxy.Proxy, len(ps))
			rs := make([]resource.Resource, len(ps))
			for i, p := range ps {
				pxs[i], rs[i] = proxied(t, p)
			}
			sc, err := recovery.New(rs, recovery.WithHorizon(0), recovery.WithLogger(quiet))
			if err != nil {
				t.Fatal(err)
			}
			// A first scan opens the pools' connections, so that the hang
			// catches idle connections as well as new ones.
			if _, err := sc.ScanOnce(testCtx(t, 10*time.Second)); err != nil {
				t.Fatal(err)
			}
			pxs[victim].Stall(dir)
			ctx, cancel := context.WithTimeout(context.Background(), hangScan)
			t0 := time.Now()
			rep, err := sc.ScanOnce(ctx)
			elapsed := time.Since(t0)
			cancel()
			pxs[victim].Heal()
			switch {
			case err != nil:
				t.Logf("scan with %s hung (%s): error after %v: %v", ps[victim].name, dir, elapsed.Round(time.Millisecond), err)
			case rep.Unreachable[ps[victim].name] == nil:
				t.Errorf("scan with %s hung (%s) reports it reachable", ps[victim].name, dir)
			default:
				t.Logf("scan with %s hung (%s): %s unreachable after %v: %v", ps[victim].name, dir, ps[victim].name, elapsed.Round(time.Millisecond), rep.Unreachable[ps[victim].name])
			}
			if elapsed > hangScan+hangSlack {
				t.Errorf("ScanOnce took %v, the caller's bound is %v (+%v slack)", elapsed.Round(time.Millisecond), hangScan, hangSlack)
			}
			// Healed, the same scanner works again.
			rep, err = sc.ScanOnce(testCtx(t, 10*time.Second))
			if err != nil || len(rep.Unreachable) > 0 {
				t.Errorf("scan after the heal: %v, unreachable %v", err, rep.Unreachable)
			}
		})
	}
}

func ph1(r resource.Resource) string { return ph(r, 1) }

func containsOutcome(os []outcome, o outcome) bool {
	for _, x := range os {
		if x == o {
			return true
		}
	}
	return false
}

func outcomeList(os []outcome) string {
	var names []string
	for _, o := range os {
		names = append(names, outcomeNames[o])
	}
	return strings.Join(names, ", ")
}
