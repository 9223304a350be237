package integration_test

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/threepc/threepc/drivers"
	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/recovery"
	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

// errStopped is what the backlog's failpoint injects: the coordinator
// stops there, as if it had died, and its branches stay prepared.
var errStopped = errors.New("backlog: coordinator stopped here")

// backlogTarget is the number of transactions left in doubt. On MariaDB a
// by-id finish of a branch whose session ended before the engine took it
// over waits for a fresh INNODB_TRX snapshot (about 110 ms each, one at a
// time per process); here the sessions have ended well before the drain,
// which is then much faster, so the backlog can be large.
const backlogTarget = 500

// TestRecoveryBacklogWithDatabaseRestarts leaves a backlog of in-doubt
// bank transfers (most stopped after their decision, with every branch
// prepared; some stopped before it, with their rollback skipped, so that
// recovery must fence them), then drains it with recovery while the
// PostgreSQL and then the MariaDB server are killed with SIGKILL and
// restarted in the middle of the scan loop. Recovery must finish, every
// transfer be in both ledgers or neither as reported, money be
// conserved, and nothing be left but the primaries' rows.
func TestRecoveryBacklogWithDatabaseRestarts(t *testing.T) {
	ctx := testCtx(t, 3*time.Minute)
	// Servers of its own, which it kills (Own skips when the environment
	// names external servers).
	srvs := []*harness.Server{
		harness.Own(t, harness.Postgres, harness.Options{Settings: map[string]string{"max_prepared_transactions": "1200"}}),
		harness.Own(t, harness.MariaDB, harness.Options{}),
	}
	ps := []part{newPart(t, srvs[0], "blg_pg", accountsDDL, ledgerDDL), newPart(t, srvs[1], "blg_my", accountsDDL, ledgerDDL)}
	seedBacklogBank(t, ps)

	// The coordinators: one transfer in four commits normally; two stop
	// after the decision (before pre-commit or before commit: every
	// branch prepared, the caller told commit-pending); one stops at its
	// decision and skips its rollback (prepared branches with no
	// decision anywhere, the caller told aborted).
	var stoppedAfter, stoppedBefore atomic.Int64
	hook := func(ctx context.Context, fp txmanager.Failpoint, gtid, res string) error {
		h := fnv.New32a()
		h.Write([]byte(gtid))
		switch kind := h.Sum32() % 4; {
		case kind == 1 && fp == txmanager.BeforePreCommit,
			kind == 1 && fp == txmanager.BeforeCommit, // 2PC: no pre-commit
			kind == 2 && fp == txmanager.BeforeCommit:
			return errStopped
		case kind == 3 && fp == txmanager.BeforeDecide:
			stoppedBefore.Add(1)
			return errStopped
		case kind == 3 && fp == txmanager.BeforeRollback:
			return errStopped
		case fp == txmanager.AfterDecide && (kind == 1 || kind == 2):
			stoppedAfter.Add(1)
		}
		return nil
	}
	coordRs := openAll(t, ps)
	var managers []*txmanager.Manager
	for _, p := range []txmanager.Protocol{txmanager.ThreePC, txmanager.TwoPC} {
		m, err := txmanager.New(coordRs, txmanager.WithLastResource(false), txmanager.WithAsyncCleanup(false), txmanager.WithProtocol(p), txmanager.WithFailpoints(hook),
			txmanager.WithTimeout(5*time.Second), txmanager.WithDecideTimeout(2*time.Second),
			txmanager.WithCommitTimeout(3*time.Second), txmanager.WithLogger(quiet))
		if err != nil {
			t.Fatal(err)
		}
		managers = append(managers, m)
	}
	t0 := time.Now()
	w := runBacklogTransfers(t, managers, coordRs, func() bool { return stoppedAfter.Load()+stoppedBefore.Load() >= backlogTarget })
	t.Logf("backlog built in %v: %d stopped after the decision, %d before it; outcomes: %s",
		time.Since(t0).Round(time.Millisecond), stoppedAfter.Load(), stoppedBefore.Load(), w.summary())
	// The coordinators' sessions end, so that MariaDB detaches their
	// prepared branches, as after a coordinator's crash.
	for _, r := range coordRs {
		resource.Close(r)
	}
	for _, p := range ps {
		if err := p.srv.WaitIdle(testCtx(t, 30*time.Second), p.db); err != nil {
			t.Fatal(err)
		}
	}

	rs := openAll(t, ps)
	before := prepared(t, ctx, rs)
	gtids := map[string]bool{}
	for _, xs := range before {
		for _, x := range xs {
			gtids[x.GTID] = true
		}
	}
	t.Logf("backlog: %d transactions in doubt, %d branches prepared at %s, %d at %s",
		len(gtids), len(before["blg_pg"]), "blg_pg", len(before["blg_my"]), "blg_my")
	if len(gtids) < backlogTarget {
		t.Fatalf("backlog of %d transactions, want at least %d", len(gtids), backlogTarget)
	}

	// Drain it while the servers die under the scans.
	// The scanner's resources count the branches finished, so that the
	// kills land at known points of the drain.
	var finished atomic.Int64
	counted := make([]resource.Resource, len(rs))
	for i, r := range rs {
		counted[i] = countingResource{Resource: r, n: &finished}
	}
	sc, err := recovery.New(counted, recovery.WithHorizon(0), recovery.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	st := &scanStats{}
	drained := make(chan time.Duration, 1)
	var lastRep atomic.Pointer[recovery.Report]
	scanCtx, stopScans := context.WithCancel(ctx)
	defer stopScans()
	start := time.Now()
	go func() {
		for scanCtx.Err() == nil {
			rep, err := sc.ScanOnce(scanCtx)
			if err != nil {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			lastRep.Store(rep)
			st.add(rep)
			if len(rep.Unreachable) == 0 && len(rep.InDoubt()) == 0 && prepared0(scanCtx, rs) {
				drained <- time.Since(start)
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	// PostgreSQL dies once a fifth of the branches are finished, MariaDB
	// once half are (counting from the start, failed attempts excluded).
	branches := len(before["blg_pg"]) + len(before["blg_my"])
	kills := []struct {
		srv    *harness.Server
		after  int // branches finished
		outage time.Duration
	}{{srvs[0], branches / 5, 500 * time.Millisecond}, {srvs[1], branches / 2, 500 * time.Millisecond}}
	for _, k := range kills {
		for finished.Load() < int64(k.after) {
			select {
			case d := <-drained:
				t.Fatalf("the backlog drained in %v before %s's kill (after %d of %d branches): the kills must land in the drain", d, k.srv.Kind(), k.after, branches)
			case <-time.After(time.Millisecond):
			}
		}
		at := time.Since(start)
		if err := k.srv.Kill(); err != nil {
			t.Fatalf("kill %s: %v", k.srv.Kind(), err)
		}
		done := finished.Load()
		time.Sleep(k.outage)
		t1 := time.Now()
		if err := k.srv.Restart(ctx); err != nil {
			t.Fatalf("restart %s: %v", k.srv.Kind(), err)
		}
		t.Logf("%s killed at %v of the drain (%d of %d branches finished), down %v, restarted in %v; scans: %s", k.srv.Kind(),
			at.Round(time.Millisecond), done, branches, k.outage, time.Since(t1).Round(time.Millisecond), scansSoFar(&lastRep))
	}
	var took time.Duration
	select {
	case took = <-drained:
	case <-time.After(75 * time.Second):
		stopScans()
		var last string
		if rep := lastRep.Load(); rep != nil {
			last = describe(rep)
			if len(last) > 4000 {
				last = last[:4000] + "..."
			}
		}
		t.Fatalf("the backlog of %d was not drained within %v of the first kill; last report:\n%s", len(gtids), 75*time.Second, last)
	}
	stopScans()
	t.Logf("backlog drained: %d transactions (%d PostgreSQL and %d MariaDB branches) in %v, %d scans, %d actions, %d benign branch errors, with both servers killed and restarted during the drain",
		len(gtids), len(before["blg_pg"]), len(before["blg_my"]), took.Round(time.Millisecond), st.scans, st.actions, st.benignErrs)
	if len(st.badErrs) > 0 {
		// Errors while a server is down are expected; the end state
		// below is what counts. Shown for the record.
		t.Logf("%d branch errors during the drain, e.g. %q", len(st.badErrs), st.badErrs[:min(3, len(st.badErrs))])
	}
	checkBacklogBank(t, w, rs)
}

// The backlog's bank: a prepared transfer holds its rows' locks until it
// is finished, so every transfer has accounts of its own (transfer i
// moves money from account i in one database to account i in the
// other), and the backlog never blocks the transfers after it.
const backlogAccounts = 2000

func seedBacklogBank(t *testing.T, ps []part) {
	t.Helper()
	ctx := testCtx(t, time.Minute)
	for _, p := range ps {
		r, err := drivers.Open(p.name, p.url())
		if err != nil {
			t.Fatal(err)
		}
		for lo := 0; lo < backlogAccounts; lo += 500 {
			var vals []string
			for i := lo; i < lo+500; i++ {
				vals = append(vals, fmt.Sprintf("(%d, %d)", i, initialBalance))
			}
			if _, err := resource.DBOf(r).ExecContext(ctx, "INSERT INTO accounts (id, balance) VALUES "+strings.Join(vals, ", ")); err != nil {
				t.Fatalf("seed %s: %v", p.name, err)
			}
		}
		resource.Close(r) // no session may stay: the drain waits for idle databases
	}
}

// runBacklogTransfers runs transfers on four workers until enough is
// true, and returns what the coordinators reported. Even transfers
// enlist PostgreSQL first (the primary), odd ones MariaDB.
func runBacklogTransfers(t *testing.T, managers []*txmanager.Manager, rs []resource.Resource, enough func() bool) *workload {
	t.Helper()
	w := &workload{outcomes: map[string]outcome{}, gtids: map[string]string{}}
	var seq atomic.Int64
	deadline := time.Now().Add(40 * time.Second)
	var wg sync.WaitGroup
	for worker := range 4 {
		wg.Go(func() {
			for !enough() && time.Now().Before(deadline) {
				n := int(seq.Add(1)) - 1
				if n >= backlogAccounts {
					return
				}
				tid := fmt.Sprintf("t%d", n)
				from, to := rs[n%2], rs[1-n%2]
				amount := 1 + n%50
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				err := managers[worker%len(managers)].Run(ctx, func(ctx context.Context, tx *txmanager.Tx) error {
					w.mu.Lock()
					w.gtids[tid] = tx.GTID()
					w.mu.Unlock()
					for _, s := range []struct {
						r    resource.Resource
						q    string
						args []any
					}{
						{from, "UPDATE accounts SET balance = balance - " + ph(from, 1) + " WHERE id = " + ph(from, 2), []any{amount, n}},
						{from, "INSERT INTO ledger (id) VALUES (" + ph(from, 1) + ")", []any{tid}},
						{to, "UPDATE accounts SET balance = balance + " + ph(to, 1) + " WHERE id = " + ph(to, 2), []any{amount, n}},
						{to, "INSERT INTO ledger (id) VALUES (" + ph(to, 1) + ")", []any{tid}},
					} {
						if _, err := tx.DB(s.r.Name()).ExecContext(ctx, s.q, s.args...); err != nil {
							return workError{err}
						}
					}
					return nil
				})
				cancel()
				o := classify(err)
				w.mu.Lock()
				w.outcomes[tid] = o
				w.counts[o]++
				if o == outUnclassified || o == outHeuristic || o == outWorkFailed {
					w.unexpected = append(w.unexpected, err.Error())
				}
				w.mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(w.unexpected) > 0 {
		t.Fatalf("%d transfers failed outside the injected stops, e.g. %q", len(w.unexpected), w.unexpected[:min(3, len(w.unexpected))])
	}
	return w
}

// checkBacklogBank is checkBank for the backlog's bank: every transfer in
// both ledgers or neither, as reported, money conserved across the two
// databases, and nothing left prepared or marked but the primaries' rows.
func checkBacklogBank(t *testing.T, w *workload, rs []resource.Resource) {
	t.Helper()
	ctx := testCtx(t, time.Minute)
	ledgers, total := readLedgers(t, ctx, rs)
	var wrong []string
	for id, o := range w.outcomes {
		a, b := ledgers[0][id], ledgers[1][id]
		switch {
		case a != b:
			wrong = append(wrong, fmt.Sprintf("MIXED OUTCOME: transfer %s (gtid %s) in %s=%v %s=%v (reported %s)", id, w.gtids[id], rs[0].Name(), a, rs[1].Name(), b, outcomeNames[o]))
		case (o == outCommitted || o == outPending) && !a:
			wrong = append(wrong, fmt.Sprintf("transfer %s (gtid %s) reported %s but absent", id, w.gtids[id], outcomeNames[o]))
		case o == outAborted && a:
			wrong = append(wrong, fmt.Sprintf("transfer %s (gtid %s) reported aborted but committed", id, w.gtids[id]))
		}
	}
	slices.Sort(wrong)
	for _, s := range wrong[:min(10, len(wrong))] {
		t.Error(s)
	}
	if len(wrong) > 10 {
		t.Errorf("... and %d more", len(wrong)-10)
	}
	if want := len(rs) * backlogAccounts * initialBalance; total != want {
		t.Errorf("total balance %d, want %d: money created or destroyed", total, want)
	}
	checkClean(t, ctx, rs)
	t.Logf("transfers: %s; %d in the ledgers; total balance %d", w.summary(), len(ledgers[0]), total)
}

// countingResource counts the prepared branches finished through it.
type countingResource struct {
	resource.Resource
	n *atomic.Int64
}

func (r countingResource) CommitPrepared(ctx context.Context, xid resource.XID) error {
	err := r.Resource.CommitPrepared(ctx, xid)
	if err == nil {
		r.n.Add(1)
	}
	return err
}

func (r countingResource) RollbackPrepared(ctx context.Context, xid resource.XID) error {
	err := r.Resource.RollbackPrepared(ctx, xid)
	if err == nil {
		r.n.Add(1)
	}
	return err
}

// prepared0 reports whether no branch is prepared on any resource; a
// resource that cannot be listed counts as not drained.
func prepared0(ctx context.Context, rs []resource.Resource) bool {
	for _, r := range rs {
		list, err := r.Recover(ctx)
		if err != nil || len(list) > 0 {
			return false
		}
	}
	return true
}

func scansSoFar(p *atomic.Pointer[recovery.Report]) string {
	rep := p.Load()
	if rep == nil {
		return "none finished"
	}
	return "last finished at " + rep.Started.Add(rep.Duration).Format("15:04:05.000") + " with " + strconv.Itoa(len(rep.InDoubt())) + " still in doubt"
}
