package integration_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/recovery"
	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

// TestHonestBlocking stops the primary's server after a coordinator
// crash. Where no reachable participant holds a precommit row, recovery
// must report the transaction in doubt and leave the other branch
// prepared (never guess), then finish it once the primary is back. Where
// 3PC wrote a precommit row at the other participant, recovery commits
// that branch while the primary is still down: the liveness 3PC buys.
func TestHonestBlocking(t *testing.T) {
	pgSrv := harness.Own(t, harness.Postgres, harness.Options{}) // stopped and restarted below
	my := harness.Shared(t, harness.MariaDB)
	ps := []part{newPart(t, pgSrv, "blk_pg", crashTable), newPart(t, my, "blk_my", crashTable)}

	cases := []struct {
		name     string
		protocol txmanager.Protocol
		fp       txmanager.Failpoint
		commit   bool
		blocks   bool // recovery must wait for the primary
	}{
		{"2pc-undecided", txmanager.TwoPC, txmanager.BeforeDecide, false, true},
		{"3pc-undecided", txmanager.ThreePC, txmanager.BeforeDecide, false, true},
		{"2pc-decided", txmanager.TwoPC, txmanager.AfterDecide, true, true},
		{"3pc-precommitted", txmanager.ThreePC, txmanager.AfterPreCommit, true, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := testCtx(t, 2*time.Minute)
			key := "blocking-" + c.name
			gtid := runChild(t, crashRun{parts: ps, protocol: c.protocol, fp: c.fp, k: 1, key: key})
			waitSessionsGone(t, ps)
			if err := pgSrv.Stop(ctx); err != nil {
				t.Fatalf("stop the primary: %v", err)
			}
			restarted := false
			defer func() {
				if !restarted {
					_ = pgSrv.Restart(context.Background())
				}
			}()
			rs := openAll(t, ps)
			myRes := rs[1]
			sc, err := recovery.New(rs, recovery.WithHorizon(0), recovery.WithLogger(quiet))
			if err != nil {
				t.Fatal(err)
			}
			// Scans with the primary down. A blocked transaction stays in
			// doubt however often it is scanned; a precommitted one is
			// committed at MariaDB (perhaps only once the server has
			// noticed the dead session), after which the scan waits with
			// the marker rows kept until the primary can be scanned.
			committedAt := 0
			for scan := 1; scan <= 40 && (scan <= 2 || (!c.blocks && committedAt == 0)); scan++ {
				rep, err := sc.ScanOnce(ctx)
				if err != nil {
					t.Fatalf("ScanOnce with the primary down: %v", err)
				}
				if rep.Unreachable["blk_pg"] == nil {
					t.Errorf("scan %d: the stopped primary is not reported unreachable: %v", scan, rep.Unreachable)
				}
				i := slices.IndexFunc(rep.Transactions, func(tx recovery.TxReport) bool { return tx.GTID == gtid })
				if i < 0 {
					t.Fatalf("scan %d: transaction %s not in the report:\n%s", scan, gtid, describe(rep))
				}
				tx := rep.Transactions[i]
				stillPrepared := slices.ContainsFunc(prepared(t, ctx, []resource.Resource{myRes})["blk_my"], func(x resource.XID) bool { return x.GTID == gtid })
				if c.blocks {
					if tx.Action != recovery.ActionInDoubt || !slices.ContainsFunc(rep.InDoubt(), func(x recovery.TxReport) bool { return x.GTID == gtid }) {
						t.Errorf("scan %d: action %q (%s), want %q: with the primary down and no precommit row reachable, recovery must not guess", scan, tx.Action, tx.Reason, recovery.ActionInDoubt)
					}
					if !stillPrepared {
						t.Errorf("scan %d: the MariaDB branch of %s is no longer prepared while the primary is down", scan, gtid)
					}
					if scan == 1 {
						t.Logf("primary down: %s reported %s (%s, err %v), age %v", gtid, tx.Action, tx.Reason, tx.Err, tx.Age.Round(time.Millisecond))
					}
					continue
				}
				if tx.Action != recovery.ActionCommit && (committedAt == 0 || tx.Action != recovery.ActionWait) {
					t.Errorf("scan %d: action %q (%s), want %q from the precommit row at blk_my", scan, tx.Action, tx.Reason, recovery.ActionCommit)
				}
				if !stillPrepared && count(t, ctx, myRes, "SELECT COUNT(*) FROM crash_rows WHERE k = ?", key) == 1 && committedAt == 0 {
					committedAt = scan
					t.Logf("primary down: the MariaDB branch of %s committed by scan %d (%s)", gtid, scan, tx.Reason)
				}
				if !slices.ContainsFunc(markers(t, ctx, []resource.Resource{myRes})["blk_my"], func(m resource.Marker) bool { return m.GTID == gtid }) {
					t.Errorf("scan %d: the precommit row at blk_my was collected while the primary (with a prepared branch) is down", scan)
				}
				time.Sleep(50 * time.Millisecond)
			}
			if !c.blocks && committedAt == 0 {
				t.Errorf("the MariaDB branch was not committed while the primary was down, despite its precommit row")
			}
			if c.blocks {
				for _, ms := range markers(t, ctx, []resource.Resource{myRes}) {
					for _, m := range ms {
						if m.GTID == gtid {
							t.Errorf("marker %s written at blk_my while the primary was down", m.State)
						}
					}
				}
			}

			restarted = true
			if err := pgSrv.Restart(ctx); err != nil {
				t.Fatalf("restart the primary: %v", err)
			}
			rs = openAll(t, ps)
			recoverFresh(t, rs, 30*time.Second)
			want := 0
			if c.commit {
				want = 1
			}
			for _, r := range rs {
				if n := count(t, ctx, r, "SELECT COUNT(*) FROM crash_rows WHERE k = "+ph(r, 1), key); n != want {
					t.Errorf("after the primary returned: %d rows at %s, want %d", n, r.Name(), want)
				}
			}
			aborts := checkClean(t, ctx, rs)
			if slices.Contains(aborts, gtid) == c.commit {
				t.Errorf("abort row for %s: %v, want %v", gtid, !c.commit, !c.commit)
			}
		})
	}
	collectAborts(t, openAll(t, ps))
}
