package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/threepc/threepc/harness"
)

// bin is the threepc binary built once for the whole package.
var bin string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "threepc-cli-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	bin = filepath.Join(dir, "threepc")
	// The go tool that runs this test is the one to build with; it sets
	// GOROOT for its children.
	goTool := "go"
	if root := os.Getenv("GOROOT"); root != "" {
		goTool = filepath.Join(root, "bin", "go")
	}
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	build := exec.Command(goTool, append(args, ".")...)
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building threepc: %v\n%s", err, out)
		return 1
	}
	return harness.Main(m)
}

// result is one run of the binary.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\n--- stdout:\n%s--- stderr:\n%s", r.code, r.stdout, r.stderr)
}

// cli runs the binary and waits for it (at most two minutes).
func cli(t *testing.T, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("threepc %v: %v", args, err)
	}
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

// want checks the exit code and that stdout+stderr contain every string.
func want(t *testing.T, r result, code int, contains ...string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("want exit %d, got %s", code, r)
	}
	all := r.stdout + r.stderr
	for _, s := range contains {
		if !strings.Contains(all, s) {
			t.Fatalf("output lacks %q:\n%s", s, r)
		}
	}
}

// wantUsage checks a bad-input failure: exit 2 and exactly one line on
// stderr, starting with "threepc: ".
func wantUsage(t *testing.T, r result, contains ...string) {
	t.Helper()
	want(t, r, 2, contains...)
	lines := strings.Split(strings.TrimRight(r.stderr, "\n"), "\n")
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "threepc: ") {
		t.Fatalf("want a one-line error on stderr, got %s", r)
	}
}

// wantQuiet checks stderr for what must never be logged: any mention of
// a heuristic outcome, any ERROR line, and WARN lines other than allowed
// (message prefixes: what the command may legitimately warn about in
// that test).
func wantQuiet(t *testing.T, r result, allowed ...string) {
	t.Helper()
	if strings.Contains(strings.ToLower(r.stderr), "heuristic") {
		t.Fatalf("a heuristic outcome was logged:\n%s", r)
	}
	for _, line := range strings.Split(r.stderr, "\n") {
		switch {
		case strings.Contains(line, "level=ERROR"):
			t.Fatalf("an error was logged: %s\n%s", line, r)
		case strings.Contains(line, "level=WARN"):
			ok := false
			for _, a := range allowed {
				ok = ok || strings.Contains(line, `msg="`+a)
			}
			if !ok {
				t.Fatalf("unexpected warning: %s\n%s", line, r)
			}
			t.Logf("allowed warning: %s", line)
		}
	}
}

// recoveryWarnings are what recover may warn about after a killed
// process: a branch still attached to the dead client's session for a
// moment (the next scan of --wait finishes it).
var recoveryWarnings = []string{"threepc/recovery: transaction"}

// ledgerClean is what bank check prints when every transfer is in all its
// databases or none and every told outcome holds.
const ledgerClean = "ledger: 0 partial transfers, 0 contradicted outcomes"

// wantChecked runs bank check and expects the books and the ledger clean.
func (d dbs) wantChecked(t *testing.T, total int) result {
	t.Helper()
	r := cli(t, d.args("bank", "check")...)
	want(t, r, 0, fmt.Sprintf("conserved: %d = %d, nothing in doubt", total, total), ledgerClean, "0 heuristic outcomes")
	wantQuiet(t, r)
	return r
}

// dbs is a fresh pair of databases on the shared servers.
type dbs struct {
	pg, my     *harness.Server
	pgDB, myDB string
}

func newDBs(t *testing.T) dbs {
	t.Helper()
	pg := harness.Shared(t, harness.Postgres)
	my := harness.Shared(t, harness.MariaDB)
	return dbs{pg: pg, my: my, pgDB: pg.NewDatabase(t), myDB: my.NewDatabase(t)}
}

func (d dbs) pgURL() string { return d.pg.URL(d.pgDB) }
func (d dbs) myURL() string { return d.my.URL(d.myDB) }

// flags are the --db flags for both databases.
func (d dbs) flags() []string {
	return []string{"--db", "pg=" + d.pgURL(), "--db", "maria=" + d.myURL()}
}

func (d dbs) args(cmd ...string) []string { return append(cmd, d.flags()...) }

// settle deals with what a killed process's sessions still do on the
// servers: a statement sent just before the kill (a PREPARE) completes
// after it, and a session waiting on a lock held by a prepared branch
// lives until recovery has released the lock. So: wait until those
// sessions are gone, then recover once more.
func (d dbs) settle(t *testing.T) {
	t.Helper()
	// A session can be stuck behind a lock that only a later recovery
	// releases (a branch the dead process prepared after the last scan):
	// wait, recover, wait again, for at most a minute.
	var err error
	for end := time.Now().Add(time.Minute); time.Now().Before(end); {
		err = nil
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		for _, w := range []struct {
			srv *harness.Server
			db  string
		}{{d.pg, d.pgDB}, {d.my, d.myDB}} {
			if err == nil {
				err = w.srv.WaitIdle(ctx, w.db)
			}
		}
		cancel()
		want(t, cli(t, d.args("recover", "--horizon", "0", "--wait", "20s")...), 0, "nothing in doubt")
		if err == nil {
			return
		}
		t.Logf("settling: %v", err)
	}
	t.Fatal(err)
}

func (d dbs) sqlDB(t *testing.T, kind harness.Kind) *sql.DB {
	t.Helper()
	var db *sql.DB
	var err error
	if kind == harness.Postgres {
		db, err = sql.Open("pgx", d.pg.DSN(d.pgDB))
	} else {
		db, err = sql.Open("mysql", d.my.DSN(d.myDB))
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// setUp migrates and seeds accounts per database.
func (d dbs) setUp(t *testing.T, accounts int) {
	t.Helper()
	want(t, cli(t, d.args("migrate")...), 0, "migrated to version 2")
	want(t, cli(t, d.args("bank", "setup", "--accounts", fmt.Sprint(accounts))...), 0,
		fmt.Sprintf("seeded total: %d", 2*accounts*1000))
}

func TestBankLifecycle(t *testing.T) {
	d := newDBs(t)
	d.setUp(t, 100)
	// migrate is idempotent, and says so; setup refuses to overwrite.
	r := cli(t, d.args("migrate")...)
	want(t, r, 0, "pg           postgresql already at version 2, nothing to do", "maria        mariadb    already at version 2, nothing to do")
	if strings.Contains(r.stdout, "migrated") {
		t.Fatalf("a second migrate claims to have migrated:\n%s", r)
	}
	wantUsage(t, cli(t, d.args("bank", "setup", "--accounts", "100")...), "--reset")

	for _, p := range []string{"3pc", "2pc", "handwritten2pc"} {
		r := cli(t, d.args("bank", "run", "--protocol", p, "--transfers", "150", "--workers", "4")...)
		want(t, r, 0, "committed", "throughput", "("+p+", 4 workers")
		wantQuiet(t, r)
		if p != "handwritten2pc" {
			want(t, r, 0, "phase latencies", "pre-commit")
		}
	}
	want(t, cli(t, d.args("bank", "run", "--duration", "500ms", "--workers", "2")...), 0, "committed")
	// Every outcome was recorded: 450 transfers by count, more by time.
	r = d.wantChecked(t, 200000)
	if strings.Contains(r.stdout, "not recorded") && !strings.Contains(r.stdout, " 0 not recorded") {
		t.Fatalf("outcomes not recorded by a client that was not killed:\n%s", r)
	}
	r = cli(t, d.args("inspect")...)
	want(t, r, 0, "nothing in doubt", "prepared transactions on the servers", "--all lists them")
	if strings.Contains(r.stdout, "GTID") {
		t.Fatalf("inspect lists finished transactions without --all:\n%s", r)
	}
	want(t, cli(t, d.args("inspect", "--all")...), 0, "GTID", "pg:committed", "wait", "nothing in doubt")
	want(t, cli(t, d.args("recover")...), 0, "nothing in doubt")

	// A leg lost behind the workload's back is found, with its gtid.
	my := d.sqlDB(t, harness.MariaDB)
	var lost string
	if err := my.QueryRow("SELECT transfer FROM threepc_bank_ledger WHERE protocol = '3pc' LIMIT 1").Scan(&lost); err != nil {
		t.Fatal(err)
	}
	if _, err := my.Exec("DELETE FROM threepc_bank_ledger WHERE transfer = ?", lost); err != nil {
		t.Fatal(err)
	}
	want(t, cli(t, d.args("bank", "check")...), 1, "NOT atomic: 1 partial transfer, 1 contradicted outcome",
		"partial      "+lost+"  3pc  in pg, not in maria (told committed)", "told committed, but missing in maria")
	want(t, cli(t, d.args("bank", "setup", "--accounts", "100", "--reset")...), 0, "seeded total: 200000")

	// Money taken out behind the workload's back is found.
	if _, err := my.Exec("UPDATE threepc_bank_accounts SET balance = balance - 7 WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	want(t, cli(t, d.args("bank", "check")...), 1, "NOT conserved: total 199993 != seeded 200000")

	// --reset starts over.
	want(t, cli(t, d.args("bank", "setup", "--accounts", "50", "--reset")...), 0, "seeded total: 100000")
	want(t, cli(t, d.args("bank", "check")...), 0, "conserved: 100000 = 100000")
}

// TestCrashRecoverInspect kills a coordinator at failpoints on both sides
// of the commit point and checks what inspect and recover report.
func TestCrashRecoverInspect(t *testing.T) {
	d := newDBs(t)
	d.setUp(t, 200)
	for _, tc := range []struct{ at, action string }{
		{"after-decide", "commit"}, // decided: recovery commits
		{"before-decide", "fence"}, // prepared, undecided: fence, roll back
		// Decided, the MariaDB branch still prepared. (By after-precommit
		// its commit, sent with the precommit row by default, may have
		// landed: nothing left in doubt.)
		{"before-commit", "commit"},
	} {
		t.Run(tc.at, func(t *testing.T) {
			r := cli(t, d.args("demo-child", "--kill-at", tc.at, "--kill-after", "5", "--workers", "3", "--duration", "60s")...)
			if r.code != -1 || !strings.Contains(r.stdout, "SIGKILL now at "+tc.at) {
				t.Fatalf("child did not kill itself: %s", r)
			}
			r = cli(t, d.args("inspect", "--horizon", "0")...)
			want(t, r, 3, "WOULD", tc.action, "in doubt")
			wantQuiet(t, r)
			// With the default horizon, inspect says that recover would
			// leave them alone for now, and how to finish them.
			r = cli(t, d.args("inspect")...)
			want(t, r, 3, "younger than the in-flight horizon (1m0s)", "`threepc recover --wait 1m", "--horizon 0 --wait 20s")
			// Young transactions are left to their (maybe live) coordinator.
			want(t, cli(t, d.args("recover")...), 3, "younger than the in-flight horizon", "`threepc recover --wait 1m")
			// The killed transfers are in doubt, not partial: the ledger
			// does not judge them yet.
			r = cli(t, d.args("bank", "check")...)
			want(t, r, 3, "in doubt", "threepc recover", ledgerClean)
			wantQuiet(t, r)
			r = cli(t, d.args("recover", "--horizon", "0", "--wait", "20s")...)
			want(t, r, 0, tc.action, "nothing in doubt")
			wantQuiet(t, r, recoveryWarnings...)
			// Not a terminal: one line per scan, the last one final.
			scans := regexp.MustCompile(`(?m)^scan \d+: \d+ transactions? \(.*\)(, \d+ in doubt \(oldest [^)]*\))?; (next scan in \S+|nothing in doubt)$`).FindAllString(r.stdout, -1)
			if len(scans) == 0 || !strings.HasSuffix(scans[len(scans)-1], "; nothing in doubt") {
				t.Fatalf("recover --wait printed no scan lines, or no final one:\n%s", r)
			}
			d.settle(t)
			want(t, cli(t, d.args("inspect")...), 0, "nothing in doubt")
			d.wantChecked(t, 400000)
			if tc.action == "fence" {
				// The fenced transaction's abort row is kept: hidden
				// without --all, listed with it with one reason, whatever
				// the horizon makes of its age.
				r := cli(t, d.args("inspect")...)
				if strings.Contains(r.stdout, "GTID") {
					t.Fatalf("inspect lists retained rows without --all:\n%s", r)
				}
				const abortKept = "finished, rolled back: the primary's abort row is kept for the retention period (24h)"
				for _, h := range []string{"0", "1m"} {
					r := cli(t, d.args("inspect", "--all", "--horizon", h)...)
					want(t, r, 0, "GTID", abortKept)
					if strings.Contains(r.stdout, "younger than") || strings.Contains(r.stdout, "24h0m0s") {
						t.Fatalf("inspect --all --horizon %s gives a retained row another reason:\n%s", h, r)
					}
				}
			}
		})
	}
}

// TestKilledBankRun: bank run SIGKILLed at a random moment, then recover,
// then check, several rounds.
func TestKilledBankRun(t *testing.T) {
	d := newDBs(t)
	d.setUp(t, 300)
	for round := range 3 {
		cmd := exec.Command(bin, d.args("bank", "run", "--duration", "60s", "--workers", "6", "--protocol", []string{"3pc", "2pc", "handwritten2pc"}[round])...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(400+time.Now().UnixNano()%1200) * time.Millisecond)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Fatalf("round %d: bank run was not killed: %v\n%s", round, cmd.ProcessState, out.String())
		}
		r := cli(t, d.args("recover", "--horizon", "0", "--wait", "20s")...)
		want(t, r, 0, "nothing in doubt")
		wantQuiet(t, r, recoveryWarnings...)
		t.Logf("round %d recover:\n%s", round, r.stdout)
		d.settle(t)
		d.wantChecked(t, 600000)
	}
}

// TestBench checks the bench's numbers and, through the ledger, that
// every transfer it ran is atomic and was reported truthfully.
//
// What each cell must show, with no fault injected: nothing in doubt,
// pending, heuristic or failed, for every variant (each needs a lost
// answer from a server or a branch lost by one); and every abort caused
// by the transaction timeout (a distributed deadlock, or a starved
// machine), for every variant: any other abort (a fence, a refused
// prepare, an LLR self-fence) is the coordinator giving up on a healthy
// transaction. The abort count itself is not asserted: deadlocks are rare
// but legitimate.
func TestBench(t *testing.T) {
	d := newDBs(t)
	d.setUp(t, 500)
	r := cli(t, d.args("bench", "--protocols", "local,handwritten2pc,2pc,3pc", "--concurrency", "1,4",
		"--duration", "400ms", "--warmup", "0", "--json")...)
	want(t, r, 0)
	wantQuiet(t, r)
	var res benchResult
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("bench --json: %v\n%s", err, r)
	}
	if len(res.Cells) != 8 {
		t.Fatalf("want 8 cells, got %d: %s", len(res.Cells), r.stdout)
	}
	var localAborts, committed, aborted int64
	for _, c := range res.Cells {
		checkCell(t, c)
		if c.Protocol == "local" {
			localAborts += c.Aborted
		}
		committed += c.Committed
		aborted += c.Aborted
		if c.TputVsLocal == nil || c.TputVsHandwritten == nil {
			t.Errorf("cell %s c=%d lacks ratios", c.Protocol, c.Concurrency)
		}
	}
	// With no warm-up every transfer is counted in a cell, and the ledger
	// recorded every outcome the cells counted. local has no atomicity: a
	// transfer whose second leg fails (a timeout on a loaded machine)
	// leaves the first committed, so the books and the ledger balance only
	// when no local transfer aborted; otherwise every broken transfer must
	// be a local one.
	r = cli(t, d.args("bank", "check")...)
	told := fmt.Sprintf("told: %d committed, %d aborted, 0 in doubt, 0 commit pending, 0 heuristic, 0 failed, 0 not recorded", committed, aborted)
	wantQuiet(t, r)
	if localAborts == 0 {
		want(t, r, 0, "conserved: 1000000 = 1000000", ledgerClean, told)
	} else {
		t.Logf("%d local transfers aborted: the books need not balance after them", localAborts)
		if r.code == 0 {
			want(t, r, 0, told)
		} else {
			want(t, r, 1, told)
		}
		for _, line := range strings.Split(r.stdout, "\n") {
			if (strings.HasPrefix(line, "  partial ") || strings.HasPrefix(line, "  contradicted ")) && !strings.Contains(line, "  local  ") {
				t.Errorf("an atomic protocol broke a transfer: %s", line)
			}
		}
	}
	want(t, cli(t, d.args("bank", "setup", "--reset", "--accounts", "500")...), 0)
	r = cli(t, d.args("bench", "--protocols", "3pc,3pc+nollr+nobatch+noasync+ro,2pc+nollr", "--concurrency", "2", "--duration", "200ms", "--json")...)
	want(t, r, 0, "3pc+nollr+nobatch+noasync+ro")
	wantQuiet(t, r)
	res = benchResult{}
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("bench --json: %v\n%s", err, r)
	}
	for _, c := range res.Cells {
		checkCell(t, c)
	}
	d.wantChecked(t, 1000000)
	r = cli(t, d.args("bench", "--protocols", "2pc+ro", "--concurrency", "1", "--duration", "100ms")...)
	want(t, r, 0, "PROTOCOL", "TX/S", "ABORTED (TIMEOUT)", "IN DOUBT", "HEURISTIC", "2pc+ro", "heap after GC")
	t.Logf("bench:\n%s\n%s", r.stdout, r.stderr)
	// Rounds: one cell per protocol and concurrency, its counts summed
	// over the rounds.
	r = cli(t, d.args("bench", "--protocols", "handwritten2pc,3pc", "--concurrency", "1", "--duration", "100ms", "--rounds", "3", "--json")...)
	want(t, r, 0)
	res = benchResult{}
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("bench --rounds --json: %v\n%s", err, r)
	}
	if len(res.Cells) != 2 {
		t.Fatalf("bench --rounds 3: %d cells, want 2\n%s", len(res.Cells), r)
	}
	for _, c := range res.Cells {
		checkCell(t, c)
		if c.Seconds < 0.3 {
			t.Errorf("%s: %.2f s measured, want three rounds of 100 ms", c.Protocol, c.Seconds)
		}
	}
	// Legs run concurrently: the books still balance, every outcome told
	// is the ledger's.
	r = cli(t, d.args("bench", "--protocols", "handwritten2pc,2pc,3pc", "--concurrency", "4", "--duration", "300ms", "--parallel-legs", "--json")...)
	want(t, r, 0)
	wantQuiet(t, r)
	res = benchResult{}
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("bench --parallel-legs --json: %v\n%s", err, r)
	}
	if !res.ParallelLegs || len(res.Cells) != 3 {
		t.Fatalf("bench --parallel-legs: parallel_legs %v, %d cells; want true and 3\n%s", res.ParallelLegs, len(res.Cells), r)
	}
	for _, c := range res.Cells {
		checkCell(t, c)
	}
	d.wantChecked(t, 1000000)
	wantUsage(t, cli(t, d.args("bench", "--rounds", "0")...), "--rounds")
	wantUsage(t, cli(t, d.args("bench", "--protocols", "4pc")...), "unknown protocol")
	wantUsage(t, cli(t, d.args("bench", "--protocols", "3pc+fast")...), "unknown option")
	wantUsage(t, cli(t, d.args("bench", "--protocols", "3pc+attached")...), "unknown option")
	wantUsage(t, cli(t, d.args("bench", "--protocols", "3pc+noro")...), "was removed")
}

// checkCell asserts what every bench cell must show (see TestBench).
func checkCell(t *testing.T, c benchCell) {
	t.Helper()
	t.Logf("cell %s c=%d: %d committed, %d aborted (%d by the timeout)", c.Protocol, c.Concurrency, c.Committed, c.Aborted, c.TimedOut)
	if c.Committed == 0 || c.TxPerSec <= 0 || c.P50Ms <= 0 || c.P99Ms < c.P50Ms {
		t.Errorf("implausible cell %+v", c)
	}
	if c.InDoubt+c.CommitPending+c.Heuristic+c.Failed > 0 {
		t.Errorf("cell %s c=%d: %d in doubt, %d pending, %d heuristic, %d failed", c.Protocol, c.Concurrency, c.InDoubt, c.CommitPending, c.Heuristic, c.Failed)
	}
	if c.Aborted != c.TimedOut {
		t.Errorf("cell %s c=%d: %d aborts, only %d by the transaction timeout", c.Protocol, c.Concurrency, c.Aborted, c.TimedOut)
	}
}

// TestNamespaces: a coordinator of namespace blue dies; recovery of the
// default namespace leaves its branches alone, blue's finishes them.
func TestNamespaces(t *testing.T) {
	d := newDBs(t)
	d.setUp(t, 200)
	var n int
	pg := d.sqlDB(t, harness.Postgres)
	if err := pg.QueryRow("SELECT COUNT(*) FROM information_schema.columns WHERE table_name = 'threepc_markers' AND column_name = 'space'").Scan(&n); err != nil {
		t.Fatal(err)
	}
	pg.Close() // settle waits for every session to end
	if n == 0 {
		// Without the column every marker row reads as the default
		// namespace's, and the default scanner would act on blue's.
		t.Skip("threepc_markers has no space column yet: marker rows do not carry the namespace")
	}
	wantUsage(t, cli(t, d.args("recover", "--namespace", strings.Repeat("x", 200))...), "--namespace")
	r := cli(t, d.args("demo-child", "--namespace", "blue", "--kill-at", "after-decide", "--kill-after", "5", "--workers", "3", "--duration", "60s")...)
	if r.code != -1 || !strings.Contains(r.stdout, "SIGKILL now at after-decide") {
		t.Fatalf("child did not kill itself: %s", r)
	}
	r = cli(t, d.args("recover", "--horizon", "0")...)
	want(t, r, 0, "of other namespaces left alone", "nothing in doubt")
	wantQuiet(t, r)
	want(t, cli(t, d.args("inspect", "--horizon", "0", "--namespace", "blue")...), 3, "WOULD", "commit")
	r = cli(t, d.args("recover", "--horizon", "0", "--wait", "20s", "--namespace", "blue")...)
	want(t, r, 0, "commit", "nothing in doubt")
	wantQuiet(t, r, recoveryWarnings...)
	d.settle(t)
	d.wantChecked(t, 400000)

	// The hand-written baseline writes its ids and rows in its namespace
	// too: the default namespace's scan finds nothing of its own.
	want(t, cli(t, d.args("bank", "run", "--namespace", "blue", "--protocol", "handwritten2pc", "--transfers", "40")...), 0, "committed")
	r = cli(t, d.args("recover", "--horizon", "0")...)
	want(t, r, 0, "nothing in doubt")
	wantQuiet(t, r)
	if strings.Contains(r.stdout, "GTID") {
		t.Fatalf("the default namespace's recovery acted on blue's rows:\n%s", r)
	}
	want(t, cli(t, d.args("inspect", "--horizon", "0", "--all", "--namespace", "blue")...), 0, "committed", "nothing in doubt")
	d.wantChecked(t, 400000)
}

func TestDemoExistingServers(t *testing.T) {
	d := newDBs(t)
	r := cli(t, "demo", "--pg", d.pgURL(), "--mysql", d.myURL(), "--duration", "1s")
	want(t, r, 0, "died of SIGKILL", "after-decide", "p50 per phase", "precommit row found",
		"conserved: 2000000 = 2000000, nothing in doubt", ledgerClean, "0 heuristic outcomes")
	wantQuiet(t, r)
	// Several transactions left by one killed coordinator (nearly always,
	// with 4 workers): the demo says why.
	if regexp.MustCompile(`leaving \d+ branch(es)? prepared in \d+ transactions`).MatchString(r.stdout) {
		want(t, r, 0, "prepared in", "transactions (one coordinator, 4 workers: each had a transfer in flight)")
	}
	if regexp.MustCompile(`    \d+ transactions in doubt from one dead coordinator`).MatchString(r.stdout) {
		want(t, r, 0, "from one dead coordinator: it ran 4 workers, and each had a transfer in flight when the process died")
	}
	// A second run on the same databases starts over.
	want(t, cli(t, "demo", "--pg", d.pgURL(), "--mysql", d.myURL(), "--duration", "500ms", "--kill-at", "before-decide"), 0,
		"fence", "conserved: 2000000 = 2000000, nothing in doubt", ledgerClean)
}

func TestDemoZeroConfig(t *testing.T) {
	if testing.Short() {
		t.Skip("starts its own servers")
	}
	for _, env := range []string{harness.EnvPostgres, harness.EnvMySQL} {
		if os.Getenv(env) != "" {
			t.Skipf("the zero-config demo starts throwaway servers, and %s names an external server: skipped; unset %s to run it", env, env)
		}
	}
	t0 := time.Now()
	r := cli(t, "demo", "--duration", "1s")
	if r.code == 2 && strings.Contains(r.stderr, "binaries not found") && os.Getenv("CI") != "true" {
		t.Skipf("no database server binaries (under CI=true this fails instead): %s", r.stderr)
	}
	want(t, r, 0, "Starting throwaway PostgreSQL and MariaDB servers ... done", "died of SIGKILL",
		"conserved: 2000000 = 2000000, nothing in doubt", ledgerClean, "servers stopped")
	wantQuiet(t, r)
	t.Logf("zero-config demo took %v", time.Since(t0))
}

func closedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

func TestBadInput(t *testing.T) {
	d := newDBs(t)
	closed := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/x?sslmode=disable", closedPort(t))
	cases := []struct {
		name string
		args []string
		msg  string
	}{
		{"no db", []string{"migrate"}, "--db NAME=URL"},
		{"malformed", []string{"migrate", "--db", "nonsense"}, "want NAME=URL"},
		{"bad name", []string{"migrate", "--db", "Bad Name=postgres://x@127.0.0.1/x"}, "resource name"},
		{"duplicate", []string{"migrate", "--db", "a=" + d.pgURL(), "--db", "a=" + d.myURL()}, "given twice"},
		{"unknown scheme", []string{"migrate", "--db", "a=redis://127.0.0.1:6379/0", "--db", "b=" + d.myURL()}, "unknown URL scheme"},
		{"unreachable", []string{"migrate", "--db", "maria=" + d.myURL(), "--db", "pg=" + closed}, "cannot reach"},
		{"missing migrations", d.args("bank", "setup"), "threepc migrate"},
		{"missing migrations recover", d.args("recover"), "threepc migrate"},
		{"one db for bank", []string{"bank", "check", "--db", "pg=" + d.pgURL()}, "at least 2"},
		{"bad flag", d.args("bank", "run", "--workers", "many"), "invalid argument"},
		{"unknown flag", d.args("bank", "run", "--speed", "9"), "unknown flag"},
		{"local in bank run", d.args("bank", "run", "--protocol", "local"), "not atomic"},
		{"unknown command", []string{"frobnicate"}, "unknown command"},
		{"bad log level", []string{"recover", "--log-level", "loud"}, "--log-level"},
		{"demo half flags", []string{"demo", "--pg", d.pgURL()}, "both --pg and --mysql"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			wantUsage(t, cli(t, tc.args...), tc.msg)
		})
	}
	// Nothing half-done: the reachable database was not migrated.
	var n int
	if err := d.sqlDB(t, harness.MariaDB).QueryRow("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE()").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("a failed command created %d tables", n)
	}
	// Not set up yet.
	want(t, cli(t, d.args("migrate")...), 0)
	wantUsage(t, cli(t, d.args("bank", "run", "--transfers", "1")...), "threepc bank setup")
	wantUsage(t, cli(t, d.args("bank", "check")...), "threepc bank setup")
}

func TestPreparedTransactionsDisabled(t *testing.T) {
	pg := harness.Own(t, harness.Postgres, harness.Options{Settings: map[string]string{"max_prepared_transactions": "0"}})
	my := harness.Shared(t, harness.MariaDB)
	for _, c := range [][]string{{"migrate"}, {"recover"}, {"bank", "setup"}} {
		r := cli(t, append(c, "--db", "pg="+pg.URL(""), "--db", "maria="+my.URL(my.NewDatabase(t)))...)
		wantUsage(t, r, "max_prepared_transactions")
	}
	// The PostgreSQL side was not touched either.
	db, err := sql.Open("pgx", pg.DSN(""))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var present bool
	if err := db.QueryRow("SELECT to_regclass('threepc_markers') IS NOT NULL").Scan(&present); err != nil {
		t.Fatal(err)
	}
	if present {
		t.Fatal("migrate created the marker table although it refused")
	}
}
