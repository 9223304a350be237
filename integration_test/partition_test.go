package integration_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mysqldriver "github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/threepc/threepc/drivers"
	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/integration_test/internal/netns"
	"github.com/threepc/threepc/recovery"
	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

// Bounds of the partition tests. The coordinator's timeouts are the hang
// tests' (hangTimeout and the rest), so are the bounds it must keep.
const (
	// partScanDeadline bounds a recovery scan while a database is cut
	// off: its listings give up on the cut database after a quarter of
	// it each.
	partScanDeadline = 2 * time.Second
	// partBlockWindow is how long recovery gets, while the route is
	// lost, to finish what it can reach; a reachable branch still
	// prepared after it (and at least two scans) is blocked.
	partBlockWindow = 3 * time.Second
	// partResolveLimit bounds recovery once the route is back.
	partResolveLimit = 30 * time.Second
)

// partCase is one cell of the partition matrix: the phase at which the
// route to one database is lost, which database, which protocol, and
// whether the coordinator goes on (live) or stays paused at the
// failpoint while recovery runs during the partition (stalled: as far as
// recovery can tell, the coordinator is gone, or partitioned along with
// the database).
type partCase struct {
	phase   string
	fp      txmanager.Failpoint // "" for the work phase: the route is lost between two statements
	proto   txmanager.Protocol
	primary bool // the primary (the first resource enlisted) loses its route, else the other
	stalled bool
}

func (c partCase) db() string {
	if c.primary {
		return "primary"
	}
	return "other"
}

func (c partCase) coordinator() string {
	if c.stalled {
		return "stalled"
	}
	return "live"
}

func (c partCase) name() string {
	return fmt.Sprintf("%s/%s/%s/%s", c.proto, c.coordinator(), c.phase, c.db())
}

// expect is what PROTOCOL.md and the README's honest limits prescribe
// for the case: the outcomes the coordinator may report, whether
// recovery is blocked while the route is lost (a reachable branch stays
// prepared), and the bounds of Run: abs from its start, after from the
// cut (live) or from the release of the paused coordinator (stalled).
func (c partCase) expect() (want []outcome, blocked bool, abs, after time.Duration) {
	commits := hangCommit // pre-commit (3PC, the other database) and commit, each bounded by the commit timeout
	if c.proto == txmanager.ThreePC {
		commits = 2 * hangCommit
	}
	if c.stalled {
		// Paused after the decision, released into the partition: the
		// branch that cannot be reached waits for its commit timeout.
		// Recovery during the pause can finish only what a reachable
		// row decides: the primary's precommit row, or with 3PC the
		// other's once it is written; without one (2PC, or 3PC before
		// the pre-commit) the lost primary blocks it.
		blocked = c.primary && c.fp != txmanager.AfterPreCommit
		if c.fp == txmanager.AfterPreCommit {
			commits = hangCommit
		}
		return []outcome{outPending}, blocked, 0, commits
	}
	switch c.phase {
	case "work":
		// The statement waits until the transaction timeout cancels
		// it; then the rollback, bounded by the commit timeout.
		return []outcome{outWorkFailed}, false, hangTimeout + hangCommit, 0
	case "vote":
		return []outcome{outAborted}, false, hangTimeout + hangCommit, 0
	case "decide":
		if c.primary {
			// The decision insert waits until the decision deadline:
			// in doubt, and the other branch stays prepared without a
			// row anywhere it can be read: blocked, with 3PC too (no
			// precommit row reached the other).
			return []outcome{outInDoubt}, true, hangTimeout + hangDecide, 0
		}
		return []outcome{outPending}, false, 0, commits
	case "precommit":
		if c.primary {
			return []outcome{outPending}, false, 0, hangCommit
		}
		return []outcome{outPending}, false, 0, 2 * hangCommit
	case "commit":
		return []outcome{outPending}, false, 0, hangCommit
	case "cleanup":
		// Every branch is committed; the clean-up gives up after its
		// timeout and leaves the rows to recovery.
		return []outcome{outCommitted}, false, 0, hangCleanup
	}
	panic("partition case without expectations: " + c.name())
}

func partCases() []partCase {
	var cs []partCase
	for _, proto := range []txmanager.Protocol{txmanager.TwoPC, txmanager.ThreePC} {
		phases := []struct {
			name string
			fp   txmanager.Failpoint
		}{
			{"work", ""}, {"vote", txmanager.BeforePrepare}, {"decide", txmanager.BeforeDecide},
			{"precommit", txmanager.BeforePreCommit}, {"commit", txmanager.BeforeCommit}, {"cleanup", txmanager.BeforeCleanup},
		}
		for _, ph := range phases {
			if ph.fp == txmanager.BeforePreCommit && proto != txmanager.ThreePC {
				continue
			}
			for _, primary := range []bool{true, false} {
				cs = append(cs, partCase{phase: ph.name, fp: ph.fp, proto: proto, primary: primary})
			}
		}
		stalls := []txmanager.Failpoint{txmanager.AfterDecide}
		if proto == txmanager.ThreePC {
			stalls = append(stalls, txmanager.AfterPreCommit)
		}
		for _, fp := range stalls {
			for _, primary := range []bool{true, false} {
				cs = append(cs, partCase{phase: string(fp), fp: fp, proto: proto, primary: primary, stalled: true})
			}
		}
	}
	return cs
}

// partResult is what a case left, for the checks once every case ran.
type partResult struct {
	key, gtid string
	o         outcome
	rows      int // in each database after the case's recovery
}

// TestPartition runs PostgreSQL (the primary) and MariaDB each in a
// network namespace of their own, reached over veth pairs, and loses the
// route to one of them (every packet dropped, silently) at every phase of
// a 2PC and a 3PC transaction. The coordinator goes on, bounded by its
// timeouts, or stays paused at the failpoint (stalled) while recovery
// runs during the partition. Then the route comes back and recovery
// finishes. Checked: every timeout fires within its bound; the outcome
// reported is the one recovery finds (nothing ever commits in one
// database only); recovery during the partition finishes what a
// reachable row decides and blocks exactly where the README's honest
// limits say (2PC with the primary lost after the decision, 3PC with the
// primary lost before a precommit row reached the other), and with 3PC a
// scan that cannot reach the primary commits from the other's precommit
// row. Each case logs one line "PARTITION proto=... phase=... db=...
// coordinator=... outcome=... blocked=... run=... resolve=...": resolve
// is the time from the route's return until recovery has finished the
// transaction everywhere.
func TestPartition(t *testing.T) {
	t0 := time.Now()
	ps, links := partitionParts(t)
	t.Logf("servers in namespaces %s (%s) and %s (%s) after %v", links[0].Name, ps[0].srv.Addr(), links[1].Name, ps[1].srv.Addr(), time.Since(t0).Round(time.Millisecond))
	var results []partResult
	for _, c := range partCases() {
		t.Run(c.name(), func(t *testing.T) {
			if r, ok := runPartitionCase(t, ps, links, c); ok {
				results = append(results, r)
			}
		})
		// A failed case may leave its route cut: the next starts whole.
		for _, l := range links {
			if l.IsCut() {
				if err := l.Restore(); err != nil {
					t.Fatalf("restore %s: %v", l.Name, err)
				}
			}
		}
	}
	t.Run("settle", func(t *testing.T) { settlePartitions(t, ps, results) })
	t.Logf("partition matrix: %d cases in %v", len(results), time.Since(t0).Round(time.Millisecond))
}

// partitionParts starts the two servers, each in a namespace of its own,
// with a database for the cases. Outside CI it skips the test where
// namespaces cannot be made (not root, no ip command); under CI=true it
// fails instead. Servers named by THREEPC_TEST_POSTGRES or
// THREEPC_TEST_MYSQL cannot be moved into a namespace: the test skips,
// as harness.Own does.
func partitionParts(t *testing.T) ([]part, []*netns.Link) {
	t.Helper()
	for _, env := range []string{harness.EnvPostgres, harness.EnvMySQL} {
		if os.Getenv(env) != "" {
			t.Skipf("partition tests start their servers in network namespaces of their own, and %s names an external server: skipped; unset %s to run them", env, env)
		}
	}
	ci := os.Getenv("CI") == "true"
	if err := netns.Available(); err != nil {
		if ci {
			t.Fatalf("partition tests must run under CI: %v", err)
		}
		t.Skipf("%v (partition tests need root and iproute2's ip; under CI=true this fails instead)", err)
	}
	kinds := []harness.Kind{harness.Postgres, harness.MariaDB}
	links := make([]*netns.Link, len(kinds))
	for i := range kinds {
		l, err := netns.New()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := l.Close(); err != nil {
				t.Errorf("close %s: %v", l.Name, err)
			}
		})
		links[i] = l
	}
	ctx := testCtx(t, 2*time.Minute)
	srvs := make([]*harness.Server, len(kinds))
	errs := make([]error, len(kinds))
	var wg sync.WaitGroup
	for i, k := range kinds {
		wg.Go(func() {
			srvs[i], errs[i] = harness.Start(ctx, k, harness.Options{NetNS: links[i].Name, Host: links[i].NSAddr})
		})
	}
	wg.Wait()
	for i, s := range srvs {
		if s != nil {
			// Registered after the links' Close: runs before it.
			t.Cleanup(func() { s.Close() })
		}
		if err := errs[i]; err != nil {
			if errors.Is(err, harness.ErrBinariesMissing) && !ci {
				t.Skipf("%v", err)
			}
			t.Fatalf("start %s in namespace %s: %v", kinds[i], links[i].Name, err)
		}
	}
	return []part{newPart(t, srvs[0], "part_pg", crashTable), newPart(t, srvs[1], "part_my", crashTable)}, links
}

// openTimed is openAll with dial timeouts in the URLs: a connection
// opened by the pool on its own (without a caller's context) into a lost
// route gives up after two seconds instead of TCP's two minutes.
func openTimed(t testing.TB, ps []part) []resource.Resource {
	t.Helper()
	rs := make([]resource.Resource, len(ps))
	for i, p := range ps {
		u := p.url()
		if p.srv.Kind() == harness.Postgres {
			u += "&connect_timeout=2"
		} else {
			u += "?timeout=2s"
		}
		r, err := drivers.Open(p.name, u)
		if err != nil {
			t.Fatalf("open %s: %v", p.name, err)
		}
		t.Cleanup(func() { resource.Close(r) })
		rs[i] = r
	}
	return rs
}

func runPartitionCase(t *testing.T, ps []part, links []*netns.Link, c partCase) (partResult, bool) {
	ctx := testCtx(t, 2*time.Minute)
	victim := 1
	if c.primary {
		victim = 0
	}
	vname, reach := ps[victim].name, 1-victim
	key := "part-" + strings.ReplaceAll(c.name(), "/", "-")
	wantOut, wantBlocked, abs, after := c.expect()
	rs := openTimed(t, ps)

	var (
		mu      sync.Mutex
		armed   bool
		start   time.Time
		cutAt   time.Time
		cutErr  error
		paused  = make(chan struct{})
		release = make(chan struct{})
	)
	cut := func() {
		mu.Lock()
		if !armed || !cutAt.IsZero() {
			mu.Unlock()
			return
		}
		cutAt = time.Now()
		cutErr = links[victim].Cut()
		mu.Unlock()
		if c.stalled {
			close(paused)
			select {
			case <-release:
			case <-ctx.Done():
			}
		}
	}
	hook := func(ctx context.Context, fp txmanager.Failpoint, gtid, res string) error {
		perBranch := fp == txmanager.BeforePrepare || fp == txmanager.BeforeCommit
		if c.fp != "" && fp == c.fp && (!perBranch || res == vname) {
			cut()
		}
		return nil
	}
	// The matrix is the protocol's own steps: every branch prepared and
	// committed, clean-up inside Commit (batched marker rows stay on, as
	// by default). Logging last resource's lost commit answer is tested
	// in decision_test.go.
	m, err := txmanager.New(rs, txmanager.WithProtocol(c.proto), txmanager.WithFailpoints(hook),
		txmanager.WithLastResource(false), txmanager.WithAsyncCleanup(false),
		txmanager.WithTimeout(hangTimeout), txmanager.WithDecideTimeout(hangDecide),
		txmanager.WithCommitTimeout(hangCommit), txmanager.WithCleanupTimeout(hangCleanup),
		txmanager.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close(context.Background())
	insert := func(ctx context.Context, tx *txmanager.Tx, key string) error {
		for _, r := range rs {
			if _, err := tx.DB(r.Name()).ExecContext(ctx, "INSERT INTO crash_rows (k) VALUES ("+ph1(r)+")", key); err != nil {
				return workError{err}
			}
		}
		return nil
	}
	// Two transactions first, so that the pools hold established
	// connections (a branch's and the marker statements'): the lost
	// route then catches statements in flight, not a handshake.
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
	start = time.Now()
	mu.Unlock()
	done := make(chan error, 1)
	go func() {
		done <- m.Run(ctx, func(ctx context.Context, tx *txmanager.Tx) error {
			gtid = tx.GTID()
			if err := insert(ctx, tx, key); err != nil {
				return err
			}
			if c.fp == "" {
				cut()
				r := rs[victim]
				if _, err := tx.DB(r.Name()).ExecContext(ctx, "UPDATE crash_rows SET k = k WHERE k = "+ph1(r), key); err != nil {
					return workError{err}
				}
			}
			return nil
		})
	}()
	var runErr error
	var ran time.Duration
	if c.stalled {
		select {
		case <-paused:
		case runErr = <-done:
			t.Fatalf("the coordinator finished (%v) without reaching %s", runErr, c.fp)
		}
	} else {
		runErr = <-done
		ran = time.Since(start)
	}
	mu.Lock()
	cutTime, err := cutAt, cutErr
	mu.Unlock()
	if err != nil {
		t.Fatalf("cut the route to %s: %v", vname, err)
	}
	if cutTime.IsZero() {
		t.Fatalf("the failpoint %s never fired for %s: the route was not cut (Run: %v)", c.fp, vname, runErr)
	}

	// While the route is lost: recovery from fresh pools, as a peer
	// instance would run it.
	blocked, reachRows, scans := recoverDuringCut(t, ps, victim, gtid, key)

	var sinceRelease time.Duration
	if c.stalled {
		released := time.Now()
		close(release)
		runErr = <-done
		sinceRelease = time.Since(released)
		ran = time.Since(start)
	}
	o := classify(runErr)
	t.Logf("%s: reported %s after %v (cut at %v), recovery during the cut: %d scans: %v", gtid, outcomeNames[o], ran.Round(time.Millisecond), cutTime.Sub(start).Round(time.Millisecond), len(scans), scans)
	if !containsOutcome(wantOut, o) {
		t.Errorf("reported %s, want %s: %v", outcomeNames[o], outcomeList(wantOut), runErr)
	}
	if abs > 0 && ran > abs+hangSlack {
		t.Errorf("Run took %v, bound %v (+%v slack)", ran.Round(time.Millisecond), abs, hangSlack)
	}
	if after > 0 {
		took := ran - cutTime.Sub(start)
		if c.stalled {
			took = sinceRelease
		}
		if took > after+hangSlack {
			t.Errorf("Run took %v after the cut (or the release), bound %v (+%v slack)", took.Round(time.Millisecond), after, hangSlack)
		}
	}
	if blocked != wantBlocked {
		t.Errorf("blocked during the partition: %v, want %v (a branch of %s still prepared at %s after %d scans: %v)", blocked, wantBlocked, gtid, ps[reach].name, len(scans), scans)
	}

	// The route comes back: recovery from fresh pools until the
	// transaction is finished everywhere.
	if err := links[victim].Restore(); err != nil {
		t.Fatalf("restore the route to %s: %v", vname, err)
	}
	restored := time.Now()
	after2 := openTimed(t, ps)
	resolveScans := resolveAfterCut(t, after2, gtid)
	resolve := time.Since(restored)

	rows := make([]int, len(after2))
	for i, r := range after2 {
		rows[i] = count(t, ctx, r, "SELECT COUNT(*) FROM crash_rows WHERE k = "+ph1(r), key)
	}
	switch {
	case rows[0] != rows[1]:
		t.Errorf("MIXED OUTCOME: rows %v in %s, %s (reported %s)", rows, ps[0].name, ps[1].name, outcomeNames[o])
	case (o == outCommitted || o == outPending) && rows[0] == 0:
		t.Errorf("reported %s, but the rows are in neither database", outcomeNames[o])
	case (o == outAborted || o == outWorkFailed) && rows[0] == 1:
		t.Errorf("reported %s, but the rows are in both databases", outcomeNames[o])
	case !blocked && reachRows != rows[reach]:
		// Not blocked: what recovery (or the coordinator) did at the
		// reachable database during the partition was already final.
		t.Errorf("%s held %d rows during the partition and %d once recovered, though not blocked", ps[reach].name, reachRows, rows[reach])
	}
	t.Logf("PARTITION proto=%s phase=%s db=%s coordinator=%s outcome=%s blocked=%v run=%v resolve=%v rows=%d",
		c.proto, c.phase, c.db(), c.coordinator(), outcomeNames[o], blocked, ran.Round(10*time.Millisecond), resolve.Round(10*time.Millisecond), rows[0])
	t.Logf("recovery after the route came back (%d scans): %v", len(resolveScans), resolveScans)
	return partResult{key: key, gtid: gtid, o: o, rows: rows[0]}, !t.Failed()
}

// recoverDuringCut runs recovery scans over fresh pools while the route
// to ps[victim] is lost, until the reachable database holds no prepared
// branch of gtid or partBlockWindow has passed (at least two scans). It
// reports whether that branch stayed prepared (blocked), the rows of key
// visible at the reachable database at the end, and what each scan did
// with gtid.
func recoverDuringCut(t *testing.T, ps []part, victim int, gtid, key string) (blocked bool, rows int, scans []string) {
	t.Helper()
	ctx := testCtx(t, time.Minute)
	rs := openTimed(t, ps)
	sc, err := recovery.New(rs, recovery.WithHorizon(0), recovery.WithLogger(quiet), recovery.WithScanDeadline(partScanDeadline))
	if err != nil {
		t.Fatal(err)
	}
	reach := rs[1-victim]
	end := time.Now().Add(partBlockWindow)
	for {
		t0 := time.Now()
		rep, err := sc.ScanOnce(ctx)
		took := time.Since(t0)
		if err != nil {
			t.Fatalf("ScanOnce during the partition: %v", err)
		}
		if took > partScanDeadline+hangSlack {
			t.Errorf("a scan during the partition took %v, its deadline is %v (+%v slack)", took.Round(time.Millisecond), partScanDeadline, hangSlack)
		}
		if rep.Unreachable[ps[victim].name] == nil {
			t.Errorf("a scan during the partition reports %s reachable", ps[victim].name)
		}
		scans = append(scans, txSummary(rep, gtid)+fmt.Sprintf(" in %v", took.Round(time.Millisecond)))
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		list, err := reach.Recover(lctx)
		cancel()
		if err != nil {
			t.Fatalf("list the prepared branches of %s during the partition: %v", reach.Name(), err)
		}
		blocked = slices.ContainsFunc(list, func(b resource.PreparedBranch) bool { return b.XID.GTID == gtid })
		if !blocked || (len(scans) >= 2 && time.Now().After(end)) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	rows = count(t, ctx, reach, "SELECT COUNT(*) FROM crash_rows WHERE k = "+ph1(reach), key)
	if blocked && !lockHeld(t, ctx, reach, key) {
		t.Errorf("the branch of %s at %s is in doubt but holds no lock on its row", gtid, reach.Name())
	}
	return blocked, rows, scans
}

// lockHeld reports whether an insert of key at r from another session
// waits for a lock, as it must behind a prepared branch that inserted
// key: the README's "its prepared branches hold their locks". The probe
// runs in a transaction that is rolled back, with a lock timeout on the
// server, so that it can never commit a row of its own, however late
// the lock is released.
func lockHeld(t *testing.T, ctx context.Context, r resource.Resource, key string) bool {
	t.Helper()
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tx, err := resource.DBOf(r).BeginTx(lctx, nil)
	if err != nil {
		t.Fatalf("begin at %s: %v", r.Name(), err)
	}
	defer tx.Rollback()
	insert := "INSERT INTO crash_rows (k) VALUES (" + ph1(r) + ")"
	if r.System() == "postgresql" {
		if _, err := tx.ExecContext(lctx, "SET LOCAL lock_timeout = '300ms'"); err != nil {
			t.Fatalf("set lock_timeout at %s: %v", r.Name(), err)
		}
	} else {
		insert = "SET STATEMENT innodb_lock_wait_timeout = 1 FOR " + insert // MariaDB
	}
	_, err = tx.ExecContext(lctx, insert, key)
	var pgErr *pgconn.PgError
	var myErr *mysqldriver.MySQLError
	switch {
	case err == nil:
		t.Errorf("inserted %s at %s beside its in-doubt branch", key, r.Name())
	case errors.As(err, &pgErr) && pgErr.Code == "55P03", errors.As(err, &myErr) && myErr.Number == 1205:
		return true // lock_not_available, ER_LOCK_WAIT_TIMEOUT
	default:
		t.Errorf("probe of the lock on %s at %s: %v", key, r.Name(), err)
	}
	return false
}

// resolveAfterCut scans until gtid is finished everywhere: no branch of
// it prepared and nothing about it in doubt. It returns what each scan
// did with gtid.
func resolveAfterCut(t *testing.T, rs []resource.Resource, gtid string) []string {
	t.Helper()
	ctx := testCtx(t, partResolveLimit+30*time.Second)
	sc, err := recovery.New(rs, recovery.WithHorizon(0), recovery.WithLogger(quiet), recovery.WithScanDeadline(partScanDeadline))
	if err != nil {
		t.Fatal(err)
	}
	end := time.Now().Add(partResolveLimit)
	var scans []string
	for {
		rep, err := sc.ScanOnce(ctx)
		if err != nil {
			t.Fatalf("ScanOnce after the partition: %v", err)
		}
		scans = append(scans, txSummary(rep, gtid))
		open := slices.ContainsFunc(rep.InDoubt(), func(tx recovery.TxReport) bool { return tx.GTID == gtid })
		if !open && countPrepared(prepared(t, ctx, rs), gtid) == 0 {
			return scans
		}
		if time.Now().After(end) {
			t.Fatalf("recovery did not finish %s within %v after the route came back; last report:\n%s", gtid, partResolveLimit, describe(rep))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// txSummary says what a scan did with gtid.
func txSummary(rep *recovery.Report, gtid string) string {
	for _, tx := range rep.Transactions {
		if tx.GTID != gtid {
			continue
		}
		var rows []string
		for n, m := range tx.Markers {
			rows = append(rows, string(m.State)+"@"+n)
		}
		slices.Sort(rows)
		s := fmt.Sprintf("%s %q rows=%v", tx.Action, tx.Reason, rows)
		if tx.Err != nil {
			// 100 bytes say enough: a lost route's dial errors
			// repeat the address three times.
			e := tx.Err.Error()
			if len(e) > 100 {
				e = e[:100] + "..."
			}
			s += " err=" + e
		}
		return s
	}
	return "not seen"
}

// settlePartitions runs once every case is done: it waits until the
// servers have ended every session the coordinators left behind (their
// last statements, held in the lost route, land when TCP retransmits
// them: a PREPARE, a COMMIT, a decision insert of a stale actor), runs
// recovery again, and checks that every case's transaction still has
// the outcome found after its own recovery, that nothing is left
// prepared and that every marker row is collected past its retention.
func settlePartitions(t *testing.T, ps []part, results []partResult) {
	t0 := time.Now()
	for _, p := range ps {
		if err := p.srv.WaitIdle(testCtx(t, time.Minute), p.db); err != nil {
			t.Fatalf("the coordinators' sessions did not end: %v", err)
		}
	}
	t.Logf("the servers ended the last stale sessions %v after the last case", time.Since(t0).Round(time.Millisecond))
	rs := openAll(t, ps)
	st := recoverFresh(t, rs, 30*time.Second)
	if len(st.badErrs) > 0 {
		t.Errorf("recovery errors: %v", st.badErrs)
	}
	ctx := testCtx(t, time.Minute)
	for _, r := range results {
		for _, res := range rs {
			if n := count(t, ctx, res, "SELECT COUNT(*) FROM crash_rows WHERE k = "+ph1(res), r.key); n != r.rows {
				t.Errorf("%s (gtid %s, reported %s): %d rows at %s after the late statements landed, %d before", r.key, r.gtid, outcomeNames[r.o], n, res.Name(), r.rows)
			}
		}
	}
	checkClean(t, ctx, rs)
	collectAborts(t, rs)
}
