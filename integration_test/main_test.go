// Package integration_test runs threepc's coordinator and recovery scanner
// against real throwaway PostgreSQL and MariaDB servers under crashes of
// the coordinator process, crashes of database servers, broken
// connections and concurrent scanners, and checks the invariants of
// PROTOCOL.md after each: no mixed outcome, nothing left prepared, no
// marker row left but the abort rows kept for their retention period.
package integration_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	mysqldriver "github.com/go-sql-driver/mysql"

	"github.com/threepc/threepc/drivers"
	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/migrations"
	"github.com/threepc/threepc/recovery"
	"github.com/threepc/threepc/resource"
)

func TestMain(m *testing.M) {
	// The MySQL driver logs every broken connection; here they are
	// deliberate, by the thousand, and the tests check outcomes instead.
	_ = mysqldriver.SetLogger(log.New(io.Discard, "", 0))
	os.Exit(harness.Main(m))
}

// quiet is the logger given to coordinators and scanners: their warnings
// are expected here by the hundred, and the tests check outcomes instead.
var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func testCtx(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// part is one participant database. Branch ids carry their database's
// tag, so two parts on one server may share a resource name
// (TestTwoDeployments does); the other tests keep names unique anyway, so
// that a failure names one database.
type part struct {
	name string
	srv  *harness.Server
	db   string
}

func (p part) url() string { return p.srv.URL(p.db) }

func (p part) dialect() migrations.Dialect {
	if p.srv.Kind() == harness.Postgres {
		return migrations.DialectPostgres
	}
	return migrations.DialectMySQL
}

// spec is the NAME=URL form the child process receives.
func (p part) spec() string { return p.name + "=" + p.url() }

// newPart creates a database on srv for resource name, runs the
// migrations and creates the tables of ddl (written to run on both
// systems).
func newPart(t *testing.T, srv *harness.Server, name string, ddl ...string) part {
	t.Helper()
	p := part{name: name, srv: srv, db: srv.NewDatabase(t)}
	r, err := drivers.Open(p.name, p.url())
	if err != nil {
		t.Fatalf("open %s: %v", p.name, err)
	}
	// Closed at once: waitSessionsGone needs the databases free of
	// sessions between cases.
	defer resource.Close(r)
	ctx := testCtx(t, time.Minute)
	if err := migrations.Up(ctx, resource.DBOf(r), p.dialect()); err != nil {
		t.Fatalf("migrations on %s: %v", name, err)
	}
	for _, q := range ddl {
		if _, err := resource.DBOf(r).ExecContext(ctx, q); err != nil {
			t.Fatalf("%s on %s: %v", q, name, err)
		}
	}
	if err := r.Check(ctx); err != nil {
		t.Fatalf("check %s: %v", name, err)
	}
	return p
}

// open returns a fresh resource (with its own pool) on p, closed at the
// end of the test.
func (p part) open(t testing.TB) resource.Resource {
	t.Helper()
	r, err := drivers.Open(p.name, p.url())
	if err != nil {
		t.Fatalf("open %s: %v", p.name, err)
	}
	t.Cleanup(func() { resource.Close(r) })
	return r
}

func openAll(t testing.TB, ps []part) []resource.Resource {
	t.Helper()
	rs := make([]resource.Resource, len(ps))
	for i, p := range ps {
		rs[i] = p.open(t)
	}
	return rs
}

// ph returns the placeholder for argument i (1-based) in r's dialect.
func ph(r resource.Resource, i int) string {
	if r.System() == "postgresql" {
		return fmt.Sprintf("$%d", i)
	}
	return "?"
}

// prepared lists the prepared branches on every resource, by resource
// name. A resource that cannot be listed fails the test.
func prepared(t testing.TB, ctx context.Context, rs []resource.Resource) map[string][]resource.XID {
	t.Helper()
	out := map[string][]resource.XID{}
	for _, r := range rs {
		list, err := r.Recover(ctx)
		if err != nil {
			t.Fatalf("Recover on %s: %v", r.Name(), err)
		}
		for _, b := range list {
			out[r.Name()] = append(out[r.Name()], b.XID)
		}
	}
	return out
}

func countPrepared(m map[string][]resource.XID, gtid string) int {
	n := 0
	for _, xs := range m {
		for _, x := range xs {
			if gtid == "" || x.GTID == gtid {
				n++
			}
		}
	}
	return n
}

// markers lists the marker rows on every resource, by resource name.
func markers(t testing.TB, ctx context.Context, rs []resource.Resource) map[string][]resource.Marker {
	t.Helper()
	out := map[string][]resource.Marker{}
	for _, r := range rs {
		ms, err := r.ListMarkers(ctx)
		if err != nil {
			t.Fatalf("ListMarkers on %s: %v", r.Name(), err)
		}
		out[r.Name()] = ms
	}
	return out
}

// benign reports whether an error left in a scan report is one the
// protocol expects under concurrency: a branch still attached to a live
// (or not yet reaped) session.
func benign(err error) bool {
	return err == nil || errors.Is(err, resource.ErrBranchBusy)
}

// scanStats counts what recovery scans did, to log and to bound error
// storms.
type scanStats struct {
	scans, actions, benignErrs int
	badErrs                    []string
	history                    map[string][]string // per gtid, what each scan saw and did
}

func (s *scanStats) add(rep *recovery.Report) {
	s.scans++
	if s.history == nil {
		s.history = map[string][]string{}
	}
	for _, tx := range rep.Transactions {
		var seen []string
		for _, b := range tx.Branches {
			seen = append(seen, fmt.Sprintf("branch %s done=%v err=%v", b.Resource, b.Done, b.Err))
		}
		for n, m := range tx.Markers {
			seen = append(seen, fmt.Sprintf("marker %s at %s", m.State, n))
		}
		s.history[tx.GTID] = append(s.history[tx.GTID], fmt.Sprintf("scan %d at %s: action=%s reason=%q err=%v [%s]",
			s.scans, rep.Started.Format("15:04:05.000000"), tx.Action, tx.Reason, tx.Err, strings.Join(seen, "; ")))
		if tx.Action != recovery.ActionWait && tx.Action != "" {
			s.actions++
		}
		errs := []error{tx.Err}
		for _, b := range tx.Branches {
			errs = append(errs, b.Err)
		}
		for _, err := range errs {
			switch {
			case err == nil, errors.Is(err, context.Canceled):
				// context.Canceled: the test stopped the scanner.
			case benign(err):
				s.benignErrs++
			default:
				s.badErrs = append(s.badErrs, fmt.Sprintf("%s %s: %v", tx.GTID, tx.Action, err))
			}
		}
	}
}

// recoverAll runs scans with the given scanner until no transaction is
// in doubt and nothing is prepared on any resource, or fails the test
// after limit.
func recoverAll(t testing.TB, sc *recovery.Scanner, rs []resource.Resource, limit time.Duration) *scanStats {
	t.Helper()
	ctx := testCtx(t, limit+30*time.Second)
	st := &scanStats{}
	deadline := time.Now().Add(limit)
	var last *recovery.Report
	for {
		rep, err := sc.ScanOnce(ctx)
		if err != nil {
			t.Fatalf("ScanOnce: %v", err)
		}
		st.add(rep)
		last = rep
		if len(rep.Unreachable) == 0 && len(rep.InDoubt()) == 0 && countPrepared(prepared(t, ctx, rs), "") == 0 {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("recovery did not finish within %v after %d scans; last report:\n%s", limit, st.scans, describe(last))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// recoverHeuristic is recoverAll for tests where a heuristic outcome is
// a possible (planted or real) result: it stops once nothing is prepared
// and every transaction still needing work is heuristic, which no further
// scan resolves (its rows stay for an operator). It returns those
// transactions; repair them with repairHeuristic.
func recoverHeuristic(t testing.TB, rs []resource.Resource, limit time.Duration, opts ...recovery.Option) (*scanStats, []recovery.TxReport) {
	t.Helper()
	sc, err := recovery.New(rs, append([]recovery.Option{recovery.WithHorizon(0), recovery.WithLogger(quiet)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t, limit+30*time.Second)
	st := &scanStats{}
	deadline := time.Now().Add(limit)
	for {
		rep, err := sc.ScanOnce(ctx)
		if err != nil {
			t.Fatalf("ScanOnce: %v", err)
		}
		st.add(rep)
		if len(rep.Unreachable) == 0 && len(rep.InDoubt()) == len(rep.Heuristic()) && countPrepared(prepared(t, ctx, rs), "") == 0 {
			return st, rep.Heuristic()
		}
		if time.Now().After(deadline) {
			t.Fatalf("recovery did not finish within %v after %d scans; last report:\n%s", limit, st.scans, describe(rep))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// repairHeuristic is the operator's repair of heuristic transactions
// once their data is judged: their rows are deleted everywhere.
func repairHeuristic(t testing.TB, rs []resource.Resource, txs []recovery.TxReport) {
	t.Helper()
	ctx := testCtx(t, time.Minute)
	for _, tx := range txs {
		for _, r := range rs {
			if err := r.DeleteMarkers(ctx, tx.GTID); err != nil {
				t.Fatalf("delete the rows of %s at %s: %v", tx.GTID, r.Name(), err)
			}
		}
	}
}

// describe renders a report for failure messages.
func describe(rep *recovery.Report) string {
	var b strings.Builder
	for n, err := range rep.Unreachable {
		fmt.Fprintf(&b, "  unreachable %s: %v\n", n, err)
	}
	for _, tx := range rep.Transactions {
		fmt.Fprintf(&b, "  %s primary=%s action=%s reason=%q err=%v age=%v\n", tx.GTID, tx.Primary, tx.Action, tx.Reason, tx.Err, tx.Age.Round(time.Millisecond))
		for _, br := range tx.Branches {
			fmt.Fprintf(&b, "    branch %s done=%v err=%v\n", br.Resource, br.Done, br.Err)
		}
		for n, m := range tx.Markers {
			fmt.Fprintf(&b, "    marker at %s: %s\n", n, m.State)
		}
	}
	return b.String()
}

// checkClean asserts invariant 4 of PROTOCOL.md after recovery: no
// prepared branch anywhere, and no marker row but the primary's row of a
// finished transaction, kept for the retention period: an abort row, or
// the committed tombstone that replaces a precommit row once every branch
// is proven committed. It returns the abort rows' gtids.
func checkClean(t testing.TB, ctx context.Context, rs []resource.Resource) []string {
	t.Helper()
	if p := prepared(t, ctx, rs); countPrepared(p, "") != 0 {
		t.Errorf("prepared branches left after recovery: %v", p)
	}
	var aborts []string
	for name, ms := range markers(t, ctx, rs) {
		for _, m := range ms {
			switch {
			case m.State != resource.StateAbort && m.State != resource.StateCommitted:
				t.Errorf("marker row left at %s after recovery: %s %s (primary %s)", name, m.GTID, m.State, m.Primary)
			case m.Primary != name:
				t.Errorf("%s row at %s, which is not the primary %s of %s", m.State, name, m.Primary, m.GTID)
			case m.State == resource.StateAbort:
				aborts = append(aborts, m.GTID)
			}
		}
	}
	slices.Sort(aborts)
	return aborts
}

// ageRows makes every row of r's marker table look older than the
// retention period by the database's clock, which is the clock recovery
// judges a row's age by (resource.Marker.Age).
func ageRows(t testing.TB, ctx context.Context, r resource.Resource) {
	t.Helper()
	q := "UPDATE threepc_markers SET created_at = created_at - INTERVAL 25 HOUR"
	if r.System() == "postgresql" {
		q = "UPDATE threepc_markers SET created_at = created_at - INTERVAL '25 hours'"
	}
	if _, err := resource.DBOf(r).ExecContext(ctx, q); err != nil {
		t.Fatalf("age the marker rows of %s: %v", r.Name(), err)
	}
}

// markerTable returns every row of r's marker table (markers, tombstones
// and evidence rows) as "gtid/branch/state".
func markerTable(t testing.TB, ctx context.Context, r resource.Resource) []string {
	t.Helper()
	rows, err := resource.DBOf(r).QueryContext(ctx, "SELECT gtid, branch, state FROM threepc_markers ORDER BY gtid, branch")
	if err != nil {
		t.Fatalf("marker table of %s: %v", r.Name(), err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var g, b, s string
		if err := rows.Scan(&g, &b, &s); err != nil {
			t.Fatal(err)
		}
		out = append(out, g+"/"+b+"/"+s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// collectAborts ages every marker row past the retention period and runs
// a scan with the default retention: it must delete every row of every
// finished transaction (abort rows, tombstones and evidence rows) and
// leave the marker tables empty. Call it only once nothing is in flight.
func collectAborts(t testing.TB, rs []resource.Resource, opts ...recovery.Option) {
	t.Helper()
	ctx := testCtx(t, time.Minute)
	for _, r := range rs {
		ageRows(t, ctx, r)
	}
	sc, err := recovery.New(rs, append([]recovery.Option{recovery.WithHorizon(0), recovery.WithLogger(quiet)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sc.ScanOnce(ctx); err != nil {
		t.Fatalf("ScanOnce past retention: %v", err)
	}
	for _, r := range rs {
		if left := markerTable(t, ctx, r); len(left) > 0 {
			t.Errorf("rows left in the marker table of %s after a scan past the retention period: %v", r.Name(), left)
		}
	}
}

// count runs a COUNT(*) query on r.
func count(t testing.TB, ctx context.Context, r resource.Resource, q string, args ...any) int {
	t.Helper()
	var n int
	if err := resource.DBOf(r).QueryRowContext(ctx, q, args...).Scan(&n); err != nil {
		t.Fatalf("%s on %s: %v", q, r.Name(), err)
	}
	return n
}

func gtidTime(gtid string) time.Time { return resource.GTIDTime(gtid) }

// waitSessionsGone waits until no session is connected to the databases
// of ps. A killed coordinator's statements are not over when the process
// is: the server runs what the dead process had sent (a ROLLBACK PREPARED
// or COMMIT PREPARED in flight completes after its death) and only then
// reads the end of the connection. Until every such session has ended
// the state is still changing: a PostgreSQL branch seen prepared may be
// rolled back a moment later, without recovery, and on MariaDB a branch
// the dead session prepared but had not yet detached is missing from XA
// RECOVER, so a recovery run that starts too early could finish without
// seeing it. Call it before opening any pool on those databases.
func waitSessionsGone(t testing.TB, ps []part) {
	t.Helper()
	for _, p := range ps {
		if err := p.srv.WaitIdle(testCtx(t, 10*time.Second), p.db); err != nil {
			t.Fatalf("sessions of %s: %v", p.name, err)
		}
	}
}
