package integration_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/recovery"
	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

// TestOutsideRollbackIsHeuristic is issue 10's fourth acceptance test: an
// operator rolls back a prepared branch from a plain session (ROLLBACK
// PREPARED on PostgreSQL, XA ROLLBACK on MariaDB, after ending the
// session that holds it) after the coordinator decided to commit. The
// branch is gone without the evidence of its commit, which contradicts
// the decision: Commit must return an error matching
// txmanager.ErrHeuristic naming the branch (never nil: the code before
// issue 10 took "unknown branch after the decision" for "committed by
// recovery"), the marker rows must stay, and every recovery scan must
// report ActionHeuristic with the branch in TxReport.Lost, never a
// commit.
func TestOutsideRollbackIsHeuristic(t *testing.T) {
	pg := harness.Shared(t, harness.Postgres)
	my := harness.Shared(t, harness.MariaDB)
	ps := []part{newPart(t, pg, "hr_pg", crashTable), newPart(t, my, "hr_my", crashTable)}
	type hcase struct {
		protocol txmanager.Protocol
		llr      bool
		fp       txmanager.Failpoint
		victim   int // index in ps; ps[0] is the primary
	}
	var cases []hcase
	for _, p := range []txmanager.Protocol{txmanager.TwoPC, txmanager.ThreePC} {
		for _, fp := range []txmanager.Failpoint{txmanager.AfterDecide, txmanager.BeforeCommit} {
			for v := range ps {
				cases = append(cases, hcase{p, false, fp, v})
			}
		}
		// With logging last resource the primary commits with the
		// decision: only the other branch is prepared.
		cases = append(cases, hcase{p, true, txmanager.AfterDecide, 1})
	}
	for _, c := range cases {
		name := fmt.Sprintf("%s/%s/%s", c.protocol, c.fp, ps[c.victim].name)
		if c.llr {
			name = fmt.Sprintf("%s-llr/%s/%s", c.protocol, c.fp, ps[c.victim].name)
		}
		t.Run(name, func(t *testing.T) {
			outsideRollback(t, ps, c.protocol, c.llr, c.fp, c.victim, "hr-"+name)
		})
	}
}

func outsideRollback(t *testing.T, ps []part, protocol txmanager.Protocol, llr bool, target txmanager.Failpoint, victim int, key string) {
	ctx := testCtx(t, time.Minute)
	coordRs := openAll(t, ps)
	paused, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	hook := func(ctx context.Context, fp txmanager.Failpoint, gtid, res string) error {
		if fp == target && (fp != txmanager.BeforeCommit || res == ps[victim].name) {
			once.Do(func() { close(paused); <-release })
		}
		return nil
	}
	m, err := txmanager.New(coordRs, txmanager.WithProtocol(protocol), txmanager.WithLastResource(llr), txmanager.WithAsyncCleanup(false),
		txmanager.WithFailpoints(hook), txmanager.WithTimeout(10*time.Second), txmanager.WithCommitTimeout(3*time.Second),
		txmanager.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	var gtid string
	done := runPaused(t, ctx, m, coordRs, key, &gtid, paused, target)
	if err := rollBackOutside(ctx, ps[victim], gtid); err != nil {
		close(release)
		<-done
		t.Fatalf("the outside rollback of %s's branch: %v", ps[victim].name, err)
	}
	close(release)
	var cerr error
	select {
	case cerr = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("coordinator did not finish after release")
	}

	rs := openAll(t, ps)
	defer func() {
		// The operator's repair: the data is as it is; the rows go.
		for _, r := range rs {
			if err := r.DeleteMarkers(ctx, gtid); err != nil {
				t.Errorf("delete the rows of %s at %s: %v", gtid, r.Name(), err)
			}
		}
	}()
	lostName := ps[victim].name
	var he *txmanager.HeuristicError
	switch {
	case cerr == nil:
		t.Errorf("Commit returned nil after %s's branch was rolled back outside threepc: a commit reported without its evidence", lostName)
	case !errors.Is(cerr, txmanager.ErrHeuristic):
		t.Errorf("Commit returned %v, want an error matching txmanager.ErrHeuristic", cerr)
	case !errors.As(cerr, &he) || !slices.Contains(he.Branches, lostName):
		t.Errorf("Commit returned %v: want a *txmanager.HeuristicError naming %s", cerr, lostName)
	}
	for _, other := range []error{txmanager.ErrAborted, txmanager.ErrCommitPending, txmanager.ErrInDoubt} {
		if errors.Is(cerr, other) {
			t.Errorf("Commit's error %v matches %v too: the outcome classes are exclusive", cerr, other)
		}
	}
	for i, r := range rs {
		want := 1
		if i == victim {
			want = 0
		}
		if n := count(t, ctx, r, "SELECT COUNT(*) FROM crash_rows WHERE k = "+ph(r, 1), key); n != want {
			t.Errorf("%d rows at %s, want %d", n, r.Name(), want)
		}
	}
	primaryRow := func(when string) {
		t.Helper()
		row, err := rs[0].ReadMarker(ctx, gtid)
		switch {
		case err != nil:
			t.Errorf("%s: the primary's decision row of %s: %v (the marker rows must stay)", when, gtid, err)
		case row.State != resource.StatePreCommit:
			t.Errorf("%s: the primary's decision row of %s is %s, want %s kept", when, gtid, row.State, resource.StatePreCommit)
		}
	}
	primaryRow("after Commit")

	sc, err := recovery.New(rs, recovery.WithHorizon(0), recovery.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	for scan := 1; scan <= 2; scan++ {
		rep, err := sc.ScanOnce(ctx)
		if err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(rep.Transactions, func(tx recovery.TxReport) bool { return tx.GTID == gtid })
		if i < 0 {
			t.Errorf("scan %d: %s not in the report:\n%s", scan, gtid, describe(rep))
			continue
		}
		tx := rep.Transactions[i]
		if tx.Action != recovery.ActionHeuristic || !slices.Contains(tx.Lost, lostName) {
			t.Errorf("scan %d: action %s (%s), lost %v; want %s with %s lost", scan, tx.Action, tx.Reason, tx.Lost, recovery.ActionHeuristic, lostName)
		}
		if !slices.ContainsFunc(rep.Heuristic(), func(x recovery.TxReport) bool { return x.GTID == gtid }) ||
			!slices.ContainsFunc(rep.InDoubt(), func(x recovery.TxReport) bool { return x.GTID == gtid }) {
			t.Errorf("scan %d: %s missing from Report.Heuristic or Report.InDoubt", scan, gtid)
		}
		if scan == 1 {
			t.Logf("coordinator: %v", cerr)
			t.Logf("scan: %s, lost %v: %s", tx.Action, tx.Lost, short(tx.Reason))
		}
	}
	primaryRow("after the scans")
}

// rollBackOutside rolls back p's prepared branch of gtid from a session
// of its own, as an operator would.
func rollBackOutside(ctx context.Context, p part, gtid string) error {
	drv := "mysql"
	if p.srv.Kind() == harness.Postgres {
		drv = "pgx"
	}
	db, err := sql.Open(drv, p.srv.DSN(p.db))
	if err != nil {
		return err
	}
	defer db.Close()
	if p.srv.Kind() == harness.Postgres {
		rows, err := db.QueryContext(ctx, "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()")
		if err != nil {
			return err
		}
		var gid string
		for rows.Next() {
			var g string
			if err := rows.Scan(&g); err != nil {
				rows.Close()
				return err
			}
			if x, ok := resource.ParsePostgresGID(g); ok && x.GTID == gtid && x.Branch == p.name {
				gid = g
			}
		}
		rows.Close()
		if gid == "" {
			return fmt.Errorf("no prepared branch of %s in pg_prepared_xacts", gtid)
		}
		_, err = db.ExecContext(ctx, "ROLLBACK PREPARED '"+gid+"'")
		return err
	}

	// MariaDB: the branch stays attached to the coordinator's session; XA
	// ROLLBACK from another session answers 1397 until that session has
	// ended and the engine has taken the transaction over.
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	find := func() (gtrid, bqual string, x resource.XID, err error) {
		rows, err := conn.QueryContext(ctx, "XA RECOVER")
		if err != nil {
			return "", "", x, err
		}
		defer rows.Close()
		for rows.Next() {
			var formatID, gl, bl int
			var data []byte
			if err := rows.Scan(&formatID, &gl, &bl, &data); err != nil {
				return "", "", x, err
			}
			if gl+bl > len(data) {
				continue
			}
			g, b := string(data[:gl]), string(data[gl:gl+bl])
			if px, tag, ok := resource.ParseMySQL(formatID, g, b); ok && px.GTID == gtid && px.Branch == p.name && tag == resource.DatabaseTag(p.db) {
				return g, b, px, nil
			}
		}
		return "", "", x, rows.Err()
	}
	gtrid, bqual, x, err := find()
	if err != nil {
		return err
	}
	if gtrid == "" {
		return fmt.Errorf("no prepared branch of %s in XA RECOVER", gtid)
	}
	if x.Session != 0 {
		if _, err := conn.ExecContext(ctx, "KILL CONNECTION "+strconv.FormatUint(x.Session, 10)); err != nil {
			var n int
			if qerr := conn.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ?", x.Session).Scan(&n); qerr != nil || n > 0 {
				return fmt.Errorf("KILL %d: %w", x.Session, err)
			}
		}
		// INNODB_TRX is a cache InnoDB refills only after 100 ms unread:
		// polling it faster would keep showing the session forever.
		for end := time.Now().Add(10 * time.Second); ; {
			time.Sleep(300 * time.Millisecond)
			var n int
			if err := conn.QueryRowContext(ctx, `SELECT (SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ?)
				+ (SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_mysql_thread_id = ?)`, x.Session, x.Session).Scan(&n); err != nil {
				return err
			}
			if n == 0 {
				break
			}
			if time.Now().After(end) {
				return fmt.Errorf("session %d still holds the branch 10 s after KILL", x.Session)
			}
		}
	}
	_, err = conn.ExecContext(ctx, fmt.Sprintf("XA ROLLBACK '%s','%s',%d", gtrid, bqual, resource.MySQLFormatID))
	return err
}
