package integration_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mysqldriver "github.com/go-sql-driver/mysql"

	"github.com/threepc/threepc/drivers"
	"github.com/threepc/threepc/drivers/mysql"
	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/recovery"
	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

// appName tags the coordinators' PostgreSQL sessions, so that the
// terminator ends theirs and leaves the scanners' alone.
const appName = "threepc_it_app"

// terminator ends the coordinators' database sessions at random, from an
// administrator's session: pg_terminate_backend on PostgreSQL, KILL on
// MariaDB. It is the server-side twin of faultproxy: the session dies in
// the server, wherever the protocol is, and the client learns it only
// from its next round trip.
type terminator struct {
	parts  []part
	admins []*sql.DB
	mu     sync.Mutex
	myIDs  map[int64]bool // MariaDB connection ids of the coordinators' pools
	kills  []atomic.Int64 // per part
}

func newTerminator(t *testing.T, ps []part) *terminator {
	t.Helper()
	k := &terminator{parts: ps, myIDs: map[int64]bool{}, kills: make([]atomic.Int64, len(ps))}
	for _, p := range ps {
		drv := "mysql"
		if p.srv.Kind() == harness.Postgres {
			drv = "pgx"
		}
		db, err := sql.Open(drv, p.srv.DSN(""))
		if err != nil {
			t.Fatal(err)
		}
		db.SetMaxOpenConns(1)
		t.Cleanup(func() { db.Close() })
		k.admins = append(k.admins, db)
	}
	return k
}

// resources opens the coordinators' resources on ps, with sessions the
// terminator can tell from everybody else's.
func (k *terminator) resources(t *testing.T) []resource.Resource {
	t.Helper()
	var rs []resource.Resource
	for _, p := range k.parts {
		if p.srv.Kind() == harness.Postgres {
			r, err := drivers.Open(p.name, p.url()+"&application_name="+appName)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { resource.Close(r) })
			rs = append(rs, r)
			continue
		}
		// MariaDB shows no application name without performance_schema:
		// the pool records the id of every connection it opens. The
		// settings are drivers/mysql.Open's.
		cfg, err := mysqldriver.ParseDSN(p.srv.DSN(p.db))
		if err != nil {
			t.Fatal(err)
		}
		cfg.MultiStatements, cfg.ParseTime, cfg.Loc = true, true, time.UTC
		conn, err := mysqldriver.NewConnector(cfg)
		if err != nil {
			t.Fatal(err)
		}
		db := sql.OpenDB(recordingConnector{Connector: conn, record: k.record})
		t.Cleanup(func() { db.Close() })
		r, err := mysql.New(p.name, db, mysql.Config{Address: p.srv.Addr()})
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r)
	}
	return rs
}

func (k *terminator) record(id int64) {
	k.mu.Lock()
	k.myIDs[id] = true
	k.mu.Unlock()
}

// kill ends one coordinator session of a random part, if there is one.
func (k *terminator) kill(ctx context.Context, rng *rand.Rand) {
	i := rng.IntN(len(k.parts))
	p, db := k.parts[i], k.admins[i]
	if p.srv.Kind() == harness.Postgres {
		var n int
		err := db.QueryRowContext(ctx, `SELECT count(pg_terminate_backend(pid)) FROM (
			SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2 ORDER BY random() LIMIT 1) s`,
			p.db, appName).Scan(&n)
		if err == nil {
			k.kills[i].Add(int64(n))
		}
		return
	}
	rows, err := db.QueryContext(ctx, "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ?", p.db)
	if err != nil {
		return
	}
	var ids []int64
	for rows.Next() {
		var id int64
		if rows.Scan(&id) == nil {
			k.mu.Lock()
			ours := k.myIDs[id]
			k.mu.Unlock()
			if ours {
				ids = append(ids, id)
			}
		}
	}
	rows.Close()
	if len(ids) == 0 {
		return
	}
	// 1094 (unknown thread): the session ended on its own meanwhile.
	if _, err := db.ExecContext(ctx, "KILL CONNECTION "+strconv.FormatInt(ids[rng.IntN(len(ids))], 10)); err == nil {
		k.kills[i].Add(1)
	}
}

// run kills sessions every few milliseconds until stop is closed.
func (k *terminator) run(stop <-chan struct{}) (done <-chan struct{}) {
	d := make(chan struct{})
	go func() {
		defer close(d)
		rng := rand.New(rand.NewPCG(7, uint64(time.Now().UnixNano())))
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(5+rng.IntN(45)) * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			k.kill(ctx, rng)
			cancel()
		}
	}()
	return d
}

func (k *terminator) summary() string {
	var parts []string
	for i, p := range k.parts {
		parts = append(parts, fmt.Sprintf("%s %d", p.name, k.kills[i].Load()))
	}
	return strings.Join(parts, ", ")
}

// recordingConnector reports the MariaDB connection id of every
// connection it opens.
type recordingConnector struct {
	driver.Connector
	record func(id int64)
}

func (c recordingConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.Connector.Connect(ctx)
	if err != nil {
		return nil, err
	}
	q, ok := conn.(driver.QueryerContext)
	if !ok {
		conn.Close()
		return nil, fmt.Errorf("test: %T cannot query", conn)
	}
	rows, err := q.QueryContext(ctx, "SELECT CONNECTION_ID()", nil)
	if err != nil {
		conn.Close()
		return nil, err
	}
	dest := make([]driver.Value, 1)
	err = rows.Next(dest)
	rows.Close()
	if err != nil {
		conn.Close()
		return nil, err
	}
	var id int64
	switch v := dest[0].(type) {
	case int64:
		id = v
	case uint64:
		id = int64(v)
	case []byte:
		id, err = strconv.ParseInt(string(v), 10, 64)
	default:
		err = fmt.Errorf("test: CONNECTION_ID() gave %T", v)
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	c.record(id)
	return conn, nil
}

// scanLog keeps what a looping scanner reported per gtid.
type scanLog struct {
	mu      sync.Mutex
	st      scanStats
	actions map[string][]recovery.TxReport
	foreign int // sum of Report.Foreign
	scans   int
}

func (l *scanLog) add(rep *recovery.Report) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.actions == nil {
		l.actions = map[string][]recovery.TxReport{}
	}
	l.st.add(rep)
	l.scans++
	l.foreign += rep.Foreign
	for _, tx := range rep.Transactions {
		if tx.Action != recovery.ActionWait {
			l.actions[tx.GTID] = append(l.actions[tx.GTID], tx)
		}
	}
}

func (l *scanLog) counts() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := map[recovery.Action]int{}
	for _, txs := range l.actions {
		for _, tx := range txs {
			n[tx.Action]++
		}
	}
	var parts []string
	for _, a := range slices.Sorted(maps.Keys(n)) {
		parts = append(parts, fmt.Sprintf("%s=%d", a, n[a]))
	}
	return fmt.Sprintf("%d scans, actions: %s; %d busy-branch answers, %d other branch errors",
		l.scans, strings.Join(parts, " "), l.st.benignErrs, len(l.st.badErrs))
}

// wrongReports returns the scanner's reports that contradict the final
// outcome of their transaction: a fence or a rollback of a transaction
// that committed, a commit of one that did not, any heuristic outcome
// (nothing outside threepc touched the branches).
func (l *scanLog) wrongReports(committed map[string]bool) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for g, txs := range l.actions {
		for _, tx := range txs {
			bad := false
			switch tx.Action {
			case recovery.ActionFence, recovery.ActionRollback:
				bad = committed[g]
			case recovery.ActionCommit:
				bad = !committed[g]
			case recovery.ActionHeuristic:
				bad = true
			}
			if bad {
				out = append(out, fmt.Sprintf("%s (committed=%v): scan reported %s (%s, err %v, lost %v)", g, committed[g], tx.Action, short(tx.Reason), tx.Err, tx.Lost))
			}
		}
	}
	slices.Sort(out)
	return out
}

// finalRecovery recovers everything once no coordinator is left. Nothing
// outside threepc touched the branches, so a heuristic outcome left after
// it is a failure; it is repaired (rows deleted) so that the end state
// can still be checked.
func finalRecovery(t *testing.T, rs []resource.Resource, opts ...recovery.Option) *scanStats {
	t.Helper()
	st, heuristic := recoverHeuristic(t, rs, 30*time.Second, opts...)
	var hs []string
	for _, tx := range heuristic {
		hs = append(hs, fmt.Sprintf("%s: branches %v lost (%s)", tx.GTID, tx.Lost, short(tx.Reason)))
	}
	errorsCapped(t, "HEURISTIC outcome left after the final recovery", hs)
	repairHeuristic(t, rs, heuristic)
	return st
}

// short cuts a long reason for a failure message.
func short(s string) string {
	if len(s) > 120 {
		return s[:120] + "..."
	}
	return s
}

// errorsCapped reports up to 10 of problems, and how many there were.
func errorsCapped(t *testing.T, what string, problems []string) {
	t.Helper()
	for i, p := range problems {
		if i == 10 {
			t.Errorf("... %d %s in all", len(problems), what)
			break
		}
		t.Errorf("%s: %s", what, p)
	}
}

// committedGTIDs maps every gtid of the workload to whether its transfer
// is in the (first) ledger, read after the final recovery.
func committedGTIDs(t *testing.T, w *workload, r resource.Resource) map[string]bool {
	t.Helper()
	ctx := testCtx(t, time.Minute)
	rows, err := resource.DBOf(r).QueryContext(ctx, "SELECT id FROM ledger")
	if err != nil {
		t.Fatalf("ledger of %s: %v", r.Name(), err)
	}
	defer rows.Close()
	in := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		in[id] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	w.mu.Lock()
	defer w.mu.Unlock()
	for tid, g := range w.gtids {
		out[g] = in[tid]
	}
	return out
}

// contradictions returns the marker rows that contradict each other or
// the data (invariant 3 of PROTOCOL.md and its consequences): an abort
// row at the primary beside a precommit row anywhere, an abort row at the
// primary of a transaction whose data committed, a committed tombstone at
// the primary of one whose data did not. committed may be nil (rows only).
func contradictions(t testing.TB, ctx context.Context, rs []resource.Resource, committed map[string]bool) []string {
	t.Helper()
	type rows struct {
		primary   resource.Marker
		atPrimary bool
		precommit []string
	}
	by := map[string]*rows{}
	for name, ms := range markers(t, ctx, rs) {
		for _, m := range ms {
			r := by[m.GTID]
			if r == nil {
				r = &rows{}
				by[m.GTID] = r
			}
			if name == m.Primary {
				r.primary, r.atPrimary = m, true
			}
			if m.State == resource.StatePreCommit {
				r.precommit = append(r.precommit, name)
			}
		}
	}
	var out []string
	for g, r := range by {
		c, known := committed[g]
		switch {
		case !r.atPrimary:
		case r.primary.State == resource.StateAbort && len(r.precommit) > 0:
			out = append(out, fmt.Sprintf("%s: abort row at the primary %s beside precommit rows at %v", g, r.primary.Primary, r.precommit))
		case r.primary.State == resource.StateAbort && known && c:
			out = append(out, fmt.Sprintf("%s: abort row at the primary %s, but the transaction committed", g, r.primary.Primary))
		case r.primary.State == resource.StateCommitted && known && !c:
			out = append(out, fmt.Sprintf("%s: committed tombstone at the primary %s, but the transaction did not commit", g, r.primary.Primary))
		}
	}
	slices.Sort(out)
	return out
}

// TestLLRConnectionsTerminated is issue 10's second acceptance test: bank
// transfers with logging last resource, 3PC and 2PC, with either database
// as the primary, while a terminator ends the coordinators' sessions at
// random (pg_terminate_backend, KILL) in every phase of the protocol, and
// a scanner with horizon 0 loops beside the live coordinators.
//
// What it hunts: the primary's one-phase commit with its decision row goes
// in but its answer is lost; meanwhile a scan sees the decision row,
// commits the other branch and settles the transaction. The coordinator's
// self-fence then must meet the decision row (kept as a tombstone), not
// an empty slot: an abort row there would make it return ErrAborted for a
// transfer committed everywhere ("safe to retry": the money moves twice).
// TestDecisionRowOutlivesStaleActors scripts that interleaving.
//
// Checked after a final recovery: every transfer in both ledgers or in
// neither; none reported aborted is in, none reported committed or
// commit-pending is out; no heuristic outcome; no scan report that
// contradicts the final outcome; no abort row beside a precommit row or
// committed data.
func TestLLRConnectionsTerminated(t *testing.T) {
	pg := harness.Shared(t, harness.Postgres)
	my := harness.Shared(t, harness.MariaDB)
	ps := []part{newPart(t, pg, "llrk_pg", accountsDDL, ledgerDDL), newPart(t, my, "llrk_my", accountsDDL, ledgerDDL)}
	rs := openAll(t, ps)
	seedBank(t, rs)
	k := newTerminator(t, ps)
	ms := bankManagers(t, k.resources(t), txmanager.WithLastResource(true))
	// Workers alternate the primary (even ones enlist PostgreSQL first):
	// this order gives each protocol both primaries.
	managers := []*txmanager.Manager{ms[0], ms[0], ms[1], ms[1]}

	sc, err := recovery.New(openAll(t, ps), recovery.WithHorizon(0), recovery.WithLogger(quiet), recovery.WithInstanceID("eager"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	scans := &scanLog{}
	wg.Go(func() { _ = sc.Run(ctx, 5*time.Millisecond, scans.add) })

	stop := make(chan struct{})
	w := runWorkload(t, managers, "llrk_pg", "llrk_my", 6, stop)
	killed := k.run(stop)
	time.Sleep(10 * time.Second)
	close(stop)
	<-killed
	w.wait(t)
	cancel()
	wg.Wait()
	t.Logf("sessions terminated: %s", k.summary())
	t.Logf("eager scanner: %s", scans.counts())

	st := finalRecovery(t, rs)
	t.Logf("final recovery: %d scans, %d actions", st.scans, st.actions)
	for _, g := range checkBank(t, w, rs) {
		t.Logf("what the eager scanner did for mixed %s: %v", g, scans.actions[g])
	}
	committed := committedGTIDs(t, w, rs[0])
	errorsCapped(t, "WRONG SCAN REPORTS", scans.wrongReports(committed))
	errorsCapped(t, "CONTRADICTORY ROWS after recovery", contradictions(t, testCtx(t, time.Minute), rs, committed))
	if w.counts[outAborted]+w.counts[outInDoubt]+w.counts[outPending]+w.counts[outWorkFailed] == 0 {
		t.Errorf("no transfer saw a fault: the terminator missed the workload")
	}
	collectAborts(t, rs)
}
