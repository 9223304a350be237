package integration_test

import (
	"bufio"
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/recovery"
	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

// crashCase is one cell of the crash matrix.
type crashCase struct {
	fp     txmanager.Failpoint
	k      int
	commit bool // the outcome PROTOCOL.md prescribes
	// minPrepared is how many branches of the transaction must be found
	// prepared after the crash, and minMarkers how many precommit rows:
	// proof that the child died where the case says.
	minPrepared, minMarkers int
	// refuse turns the last participant's successful vote into a
	// failure, so that the coordinator takes the abort path with every
	// branch prepared.
	refuse bool
}

// String names the case, and with it its subtest: "k=" and not "#",
// which reads as the suffix go test adds to duplicate names.
func (c crashCase) String() string {
	if c.refuse {
		return fmt.Sprintf("refused/%s/k=%d", c.fp, c.k)
	}
	return fmt.Sprintf("%s/k=%d", c.fp, c.k)
}

// crashCases lists the failpoints of the matrix for n participants: dying
// before the decision rolls everything back, dying after it commits
// everything.
func crashCases(protocol txmanager.Protocol, n int) []crashCase {
	var cs []crashCase
	for k := 1; k <= n; k++ {
		cs = append(cs, crashCase{fp: txmanager.AfterPrepare, k: k, minPrepared: k})
	}
	cs = append(cs,
		crashCase{fp: txmanager.BeforeDecide, k: 1, minPrepared: n},
		// The decision row's batch is in, its answer not yet handed out.
		crashCase{fp: txmanager.AfterBatch, k: 1, commit: true, minPrepared: n, minMarkers: 1},
		crashCase{fp: txmanager.AfterDecide, k: 1, commit: true, minPrepared: n, minMarkers: 1})
	if protocol == txmanager.ThreePC {
		for k := 1; k < n; k++ {
			cs = append(cs, crashCase{fp: txmanager.AfterPreCommit, k: k, commit: true, minPrepared: n, minMarkers: 1 + k})
		}
		// The pre-commit rows' batches (one per other participant).
		cs = append(cs, crashCase{fp: txmanager.AfterBatch, k: n, commit: true, minPrepared: n, minMarkers: 2})
	}
	for k := 1; k <= n; k++ {
		cs = append(cs, crashCase{fp: txmanager.AfterCommit, k: k, commit: true, minMarkers: 1})
	}
	return append(cs,
		crashCase{fp: txmanager.BeforeCleanup, k: 1, commit: true, minMarkers: 1},
		// The abort path: dying while rolling back leaves prepared
		// branches without any marker; recovery fences and rolls back.
		crashCase{fp: txmanager.BeforeRollback, k: 1, refuse: true, minPrepared: n},
		// Rollbacks run in parallel: by the first AfterRollback the
		// others may be done too.
		crashCase{fp: txmanager.AfterRollback, k: 1, refuse: true},
	)
}

// crashCasesLastResource are the cases with logging last resource: the
// primary (parts[0]) is never prepared, and its one-phase commit with the
// precommit row is the decision, so one branch fewer is found prepared and
// one commit fewer happens after the decision.
func crashCasesLastResource(protocol txmanager.Protocol, n int) []crashCase {
	var cs []crashCase
	for k := 1; k < n; k++ {
		cs = append(cs, crashCase{fp: txmanager.AfterPrepare, k: k, minPrepared: k})
	}
	cs = append(cs,
		crashCase{fp: txmanager.BeforeDecide, k: 1, minPrepared: n - 1},
		crashCase{fp: txmanager.AfterDecide, k: 1, commit: true, minPrepared: n - 1, minMarkers: 1})
	if protocol == txmanager.ThreePC {
		// With one branch besides the primary, its precommit row and its
		// commit go out together: by the crash after the row, the commit
		// may have landed too.
		minPrepared := n - 1
		if n == 2 {
			minPrepared = 0
		}
		for k := 1; k < n; k++ {
			cs = append(cs, crashCase{fp: txmanager.AfterPreCommit, k: k, commit: true, minPrepared: minPrepared, minMarkers: 1 + k})
			// The decision is in the primary's commit: the batches are
			// the pre-commit rows'.
			cs = append(cs, crashCase{fp: txmanager.AfterBatch, k: k, commit: true, minPrepared: minPrepared, minMarkers: 1 + k})
		}
	}
	for k := 1; k < n; k++ {
		cs = append(cs, crashCase{fp: txmanager.AfterCommit, k: k, commit: true, minMarkers: 1})
	}
	return append(cs,
		crashCase{fp: txmanager.BeforeCleanup, k: 1, commit: true, minMarkers: 1},
		crashCase{fp: txmanager.BeforeRollback, k: 1, refuse: true, minPrepared: n - 1},
	)
}

// TestCrashMatrixOptimized is the crash matrix with the defaults
// (logging last resource, batched marker rows, asynchronous clean-up)
// and the one opt-in, MariaDB's read-only vote (its status queries run
// around every branch; the branches write, so they vote prepared).
// TestCrashMatrix runs batched marker rows alone, without logging last
// resource: the decision rows go through the batcher. (MariaDB branches
// always stay on their session now: the detached mode is gone.)
func TestCrashMatrixOptimized(t *testing.T) {
	runMatrix(t, "co", crashCasesLastResource, "llr,async,batch,ro")
}

// crashParts makes the participants of a matrix group: PostgreSQL (the
// primary), MariaDB, and for three a second PostgreSQL database on the
// same server, whose gids share the server-wide namespace with the first.
func crashParts(t *testing.T, prefix string, n int) []part {
	pg := harness.Shared(t, harness.Postgres)
	my := harness.Shared(t, harness.MariaDB)
	ps := []part{newPart(t, pg, prefix+"_pg", crashTable), newPart(t, my, prefix+"_my", crashTable)}
	if n == 3 {
		ps = append(ps, newPart(t, pg, prefix+"_pg2", crashTable))
	}
	return ps
}

// TestCrashMatrix kills the coordinator process with SIGKILL at every
// failpoint of the protocol, for 2 and 3 participants and both protocols,
// then runs recovery from fresh pools in this process and checks that
// the transaction ended all-committed or all-rolled-back as PROTOCOL.md
// prescribes, with nothing prepared and no marker left but the fence's
// abort row, which a scan past the retention period collects.
func TestCrashMatrix(t *testing.T) { runMatrix(t, "cm", crashCases, "batch") }

// runMatrix runs cases for 2 and 3 participants and both protocols, each
// group on databases of its own, in parallel.
func runMatrix(t *testing.T, prefix string, cases func(txmanager.Protocol, int) []crashCase, options string) {
	for _, protocol := range []txmanager.Protocol{txmanager.TwoPC, txmanager.ThreePC} {
		for _, n := range []int{2, 3} {
			group := fmt.Sprintf("%s%s%d", prefix, protocol, n)
			t.Run(fmt.Sprintf("%s/n=%d", protocol, n), func(t *testing.T) {
				t.Parallel()
				ps := crashParts(t, group, n)
				for _, c := range cases(protocol, n) {
					t.Run(c.String(), func(t *testing.T) {
						runCrashCaseWith(t, ps, protocol, c, group+"-"+strings.ReplaceAll(c.String(), "/", "-"), options)
					})
				}
				collectAborts(t, openAll(t, ps))
			})
		}
	}
}

func runCrashCaseWith(t *testing.T, ps []part, protocol txmanager.Protocol, c crashCase, key, options string) {
	ctx := testCtx(t, time.Minute)
	run := crashRun{parts: ps, protocol: protocol, fp: c.fp, k: c.k, key: key, options: options}
	if c.refuse {
		run.refuse = ps[len(ps)-1].name
	}
	gtid := runChild(t, run)
	waitSessionsGone(t, ps)
	rs := openAll(t, ps) // a new process's view: fresh pools

	// The crash left what the failpoint says. MariaDB lists a branch of a
	// dead session once the server has noticed the disconnect: poll.
	var nPrep, nMark int
	var where []string // the resources holding its prepared branches
	for end := time.Now().Add(3 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		where = where[:0]
		for name, xs := range prepared(t, ctx, rs) {
			for _, x := range xs {
				if x.GTID == gtid {
					where = append(where, name)
				}
			}
		}
		slices.Sort(where)
		nPrep = len(where)
		nMark = 0
		for _, ms := range markers(t, ctx, rs) {
			for _, m := range ms {
				if m.GTID == gtid {
					nMark++
					if m.State != resource.StatePreCommit {
						t.Errorf("%s row for %s before any recovery ran", m.State, gtid)
					}
				}
			}
		}
		if (nPrep >= c.minPrepared && nMark >= c.minMarkers) || time.Now().After(end) {
			break
		}
	}
	if nPrep < c.minPrepared || nMark < c.minMarkers || (!c.commit && nMark != 0) {
		t.Fatalf("after the crash at %v: %d branches prepared, %d precommit rows; want at least %d and %d (0 rows before the decision)",
			c, nPrep, nMark, c.minPrepared, c.minMarkers)
	}

	sc, err := recovery.New(rs, recovery.WithHorizon(0), recovery.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	st := recoverAll(t, sc, rs, 20*time.Second)
	if len(st.badErrs) > 0 {
		t.Errorf("recovery errors: %v", st.badErrs)
	}

	want := 0
	if c.commit {
		want = 1
	}
	for _, r := range rs {
		got := count(t, ctx, r, "SELECT COUNT(*) FROM crash_rows WHERE k = "+ph(r, 1), key)
		if got != want {
			t.Errorf("%s: %d rows of %s at %s, want %d (commit=%v): mixed or wrong outcome", c, got, key, r.Name(), want, c.commit)
		}
	}
	aborts := checkClean(t, ctx, rs)
	// A rollback needs the fence whenever recovery found a prepared
	// branch; a commit never leaves an abort row. Both views are taken
	// once the dead coordinator's sessions are gone (waitSessionsGone):
	// before that, a rollback it had sent could still land between the
	// two and leave recovery nothing to fence.
	if fenced, want := slices.Contains(aborts, gtid), !c.commit && nPrep > 0; fenced != want {
		t.Errorf("%s: abort row at the primary for %s: %v, want %v (prepared after the crash at %v)", c, gtid, fenced, want, where)
	}
	t.Logf("%s: gtid %s, %d prepared (%v) and %d precommit rows after the crash, %d scans", c, gtid, nPrep, where, nMark, st.scans)
}

// recoverFresh is recoverAll on a new scanner with horizon 0 (everything
// counts as old: call it only when no coordinator is alive), with opts
// (a namespace) added.
func recoverFresh(t *testing.T, rs []resource.Resource, limit time.Duration, opts ...recovery.Option) *scanStats {
	t.Helper()
	sc, err := recovery.New(rs, append([]recovery.Option{recovery.WithHorizon(0), recovery.WithLogger(quiet)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return recoverAll(t, sc, rs, limit)
}

// TestCrashMidBatch kills a coordinator running six transactions at once
// right after a batch holding several of their decision rows returned, its
// answers not yet handed out (failpoint after-batch, batching without
// logging last resource). Recovery must commit every transaction of that
// batch and leave every transaction all-or-nothing.
func TestCrashMidBatch(t *testing.T) {
	for _, protocol := range []txmanager.Protocol{txmanager.TwoPC, txmanager.ThreePC} {
		t.Run(string(protocol), func(t *testing.T) {
			ps := crashParts(t, "mb"+string(protocol[0]), 2)
			ctx := testCtx(t, time.Minute)
			key := "mid-batch-" + string(protocol)
			c := startChild(t, crashRun{parts: ps, protocol: protocol, fp: txmanager.AfterBatch, k: 1, key: key, options: "batch", txs: 6})
			c.crashed(t)
			var batch []string
			keyOf := map[string]string{}
			sc := bufio.NewScanner(bytes.NewReader(c.stdout.Bytes()))
			for sc.Scan() {
				line := sc.Text()
				if b, ok := strings.CutPrefix(line, "batch="); ok {
					batch = strings.Split(b, ",")
				}
				if g, ok := strings.CutPrefix(line, "gtid="); ok {
					g, k, _ := strings.Cut(g, " key=")
					keyOf[g] = k
				}
			}
			if len(batch) < 2 {
				t.Fatalf("the child died at a batch of %d rows, want several\n%s", len(batch), c.stdout.String())
			}
			waitSessionsGone(t, ps)
			rs := openAll(t, ps)
			st := recoverFresh(t, rs, 20*time.Second)
			if len(st.badErrs) > 0 {
				t.Errorf("recovery errors: %v", st.badErrs)
			}
			committed := 0
			for g, k := range keyOf {
				var got []int
				for _, r := range rs {
					got = append(got, count(t, ctx, r, "SELECT COUNT(*) FROM crash_rows WHERE k = "+ph(r, 1), k))
				}
				if got[0] != got[1] {
					t.Errorf("%s (%s): rows %v across the databases: mixed outcome", g, k, got)
				}
				if slices.Contains(batch, g) && got[0] != 1 {
					t.Errorf("%s (%s): its decision row was in the crashed batch, but rows %v: want committed", g, k, got)
				}
				committed += got[0]
			}
			checkClean(t, ctx, rs)
			t.Logf("batch of %d decision rows when the coordinator died; %d of %d transactions committed after recovery (%d scans)", len(batch), committed, len(keyOf), st.scans)
		})
	}
}
