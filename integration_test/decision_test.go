package integration_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/recovery"
	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

// lostAnswerResource makes the primary's logging-last-resource commit go
// in while its answer is lost: after the real CommitWithMarker succeeds,
// it calls afterCommit (the test runs its scans there) and then returns a
// connection error, as if the connection had died before the reply.
type lostAnswerResource struct {
	resource.Resource
	afterCommit func(m resource.Marker)
}

func (r lostAnswerResource) Begin(ctx context.Context, xid resource.XID) (resource.Branch, error) {
	b, err := r.Resource.Begin(ctx, xid)
	if err != nil {
		return nil, err
	}
	mc, ok := b.(resource.MarkerCommitter)
	if !ok {
		b.Close()
		return nil, fmt.Errorf("test: %s's branch cannot commit with a marker", r.Name())
	}
	return lostAnswerBranch{Branch: b, mc: mc, afterCommit: r.afterCommit}, nil
}

type lostAnswerBranch struct {
	resource.Branch
	mc          resource.MarkerCommitter
	afterCommit func(m resource.Marker)
}

func (b lostAnswerBranch) CommitWithMarker(ctx context.Context, m resource.Marker) error {
	if err := b.mc.CommitWithMarker(ctx, m); err != nil {
		return err
	}
	b.afterCommit(m)
	return fmt.Errorf("%w: test: the answer to the one-phase commit was lost", resource.ErrUnreachable)
}

// staleScript is one scripted interleaving of a coordinator and a stale
// actor; it returns the broken promises.
type staleScript func(t *testing.T, ps []part, protocol txmanager.Protocol, llr bool, key string) []string

// TestDecisionRowOutlivesStaleActors scripts, on real servers, the two
// interleavings of issue 10's fact 2, where the decision row deleted once
// every branch was committed let a stale actor act on its absence:
//
//   - llr-lost-answer: the primary's one-phase commit (with its decision
//     row) goes in but its answer is lost; before the coordinator's
//     self-fence, a scan with horizon 0 sees the decision row, commits the
//     other branch and settles the transaction. The self-fence must meet
//     the decision row (a tombstone now) and report commit, never
//     ErrAborted.
//   - stale-fence: a scan reads the markers (none) and the branches
//     (prepared) before the decision and goes to fence; before its insert
//     lands the coordinator decides, commits and cleans up. The fence must
//     meet the tombstone: no abort row beside committed data, no "fence"
//     report for a committed transaction.
//
// TestDecisionRowSeededDeletionIsCaught plants the old behaviour
// (seeded.DeleteDecisionRow) and shows these scripts catch it.
func TestDecisionRowOutlivesStaleActors(t *testing.T) {
	pg := harness.Shared(t, harness.Postgres)
	my := harness.Shared(t, harness.MariaDB)
	ps := []part{newPart(t, pg, "dr_pg", crashTable), newPart(t, my, "dr_my", crashTable)}
	for _, c := range staleCases() {
		t.Run(c.name, func(t *testing.T) {
			for _, p := range c.script(t, ps, c.protocol, c.llr, "dr-"+c.name) {
				t.Error(p)
			}
		})
	}
	collectAborts(t, openAll(t, ps))
}

type staleCase struct {
	name     string
	script   staleScript
	protocol txmanager.Protocol
	llr      bool
}

func staleCases() []staleCase {
	var cs []staleCase
	for _, p := range []txmanager.Protocol{txmanager.TwoPC, txmanager.ThreePC} {
		cs = append(cs,
			staleCase{"llr-lost-answer-" + string(p), llrLostAnswer, p, true},
			staleCase{"stale-fence-" + string(p), staleFence, p, false},
			staleCase{"stale-fence-llr-" + string(p), staleFence, p, true})
	}
	return cs
}

// insertEverywhere is the transaction of the scripts: one row keyed key
// in every participant.
func insertEverywhere(rs []resource.Resource, key string, gtid *string) func(ctx context.Context, tx *txmanager.Tx) error {
	return func(ctx context.Context, tx *txmanager.Tx) error {
		*gtid = tx.GTID()
		for _, r := range rs {
			if _, err := tx.DB(r.Name()).ExecContext(ctx, "INSERT INTO crash_rows (k) VALUES ("+ph(r, 1)+")", key); err != nil {
				return err
			}
		}
		return nil
	}
}

// judge checks the end state of a script's transaction after a final
// recovery: one outcome everywhere, the coordinator's answer true to it,
// no contradictory rows, no scan report contradicting it.
func judge(t *testing.T, rs []resource.Resource, key, gtid string, cerr error, reports []recovery.TxReport) (problems []string) {
	t.Helper()
	ctx := testCtx(t, time.Minute)
	st, heuristic := recoverHeuristic(t, rs, 20*time.Second)
	for _, tx := range heuristic {
		problems = append(problems, fmt.Sprintf("HEURISTIC outcome left after recovery for %s: branches %v lost (%s)", tx.GTID, tx.Lost, short(tx.Reason)))
	}
	repairHeuristic(t, rs, heuristic)
	n := make([]int, len(rs))
	for i, r := range rs {
		n[i] = count(t, ctx, r, "SELECT COUNT(*) FROM crash_rows WHERE k = "+ph(r, 1), key)
	}
	committed := n[0] == 1
	if n[0] != n[1] {
		problems = append(problems, fmt.Sprintf("MIXED OUTCOME for %s: rows %v (coordinator: %v)", gtid, n, cerr))
	}
	switch {
	case cerr == nil, errors.Is(cerr, txmanager.ErrCommitPending):
		if !committed {
			problems = append(problems, fmt.Sprintf("coordinator reported commit (%v) but rows are %v", cerr, n))
		}
	case errors.Is(cerr, txmanager.ErrAborted):
		if committed {
			problems = append(problems, fmt.Sprintf("coordinator returned ErrAborted (\"safe to retry\") for a transaction committed everywhere: %v", cerr))
		}
	case errors.Is(cerr, txmanager.ErrInDoubt):
	case errors.Is(cerr, txmanager.ErrHeuristic):
		problems = append(problems, fmt.Sprintf("coordinator reported a heuristic outcome, rows %v: %v", n, cerr))
	default:
		problems = append(problems, fmt.Sprintf("coordinator returned an error outside the outcome classes: %v", cerr))
	}
	for _, tx := range reports {
		if tx.GTID != gtid {
			continue
		}
		switch {
		case (tx.Action == recovery.ActionFence || tx.Action == recovery.ActionRollback) && committed,
			tx.Action == recovery.ActionCommit && !committed,
			tx.Action == recovery.ActionHeuristic:
			problems = append(problems, fmt.Sprintf("scan reported %s (%s, err %v) for a transaction that %s", tx.Action, tx.Reason, tx.Err, map[bool]string{true: "committed", false: "did not commit"}[committed]))
		}
	}
	for _, c := range contradictions(t, ctx, rs, map[string]bool{gtid: committed}) {
		problems = append(problems, "contradictory rows after recovery: "+c)
	}
	if len(st.badErrs) > 0 && len(heuristic) == 0 {
		problems = append(problems, fmt.Sprintf("final recovery errors: %v", st.badErrs))
	}
	t.Logf("coordinator: %v; rows %v; stale scans: %v", cerr, n, actionsOf(reports, gtid))
	return problems
}

func actionsOf(reports []recovery.TxReport, gtid string) []string {
	var out []string
	for _, tx := range reports {
		if tx.GTID == gtid {
			out = append(out, fmt.Sprintf("%s (%s)", tx.Action, tx.Reason))
		}
	}
	return out
}

// llrLostAnswer: see TestDecisionRowOutlivesStaleActors.
func llrLostAnswer(t *testing.T, ps []part, protocol txmanager.Protocol, _ bool, key string) []string {
	ctx := testCtx(t, time.Minute)
	rs := openAll(t, ps)
	coordRs := openAll(t, ps)
	sc, err := recovery.New(rs, recovery.WithHorizon(0), recovery.WithLogger(quiet), recovery.WithInstanceID("stale-scan"))
	if err != nil {
		t.Fatal(err)
	}
	var reports []recovery.TxReport
	lost := lostAnswerResource{Resource: coordRs[0], afterCommit: func(mk resource.Marker) {
		// The decision is in at the primary; the MariaDB branch is
		// prepared. The scans commit it and settle the transaction.
		for range 2 {
			rep, err := sc.ScanOnce(ctx)
			if err != nil {
				t.Errorf("ScanOnce: %v", err)
				return
			}
			reports = append(reports, rep.Transactions...)
		}
		if n := countPrepared(prepared(t, ctx, rs), mk.GTID); n != 0 {
			t.Logf("the scans left %d branches of %s prepared: the script's interleaving did not happen", n, mk.GTID)
		}
	}}
	m, err := txmanager.New([]resource.Resource{lost, coordRs[1]}, txmanager.WithLastResource(false), txmanager.WithAsyncCleanup(false), txmanager.WithProtocol(protocol),
		txmanager.WithLastResource(true), txmanager.WithTimeout(10*time.Second), txmanager.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	var gtid string
	cerr := m.Run(ctx, insertEverywhere(coordRs, key, &gtid))
	return judge(t, rs, key, gtid, cerr, reports)
}

// staleFence: see TestDecisionRowOutlivesStaleActors.
func staleFence(t *testing.T, ps []part, protocol txmanager.Protocol, llr bool, key string) []string {
	ctx := testCtx(t, time.Minute)
	coordRs := openAll(t, ps)
	paused, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	hook := func(ctx context.Context, fp txmanager.Failpoint, gtid, res string) error {
		if fp == txmanager.BeforeDecide {
			once.Do(func() { close(paused); <-release })
		}
		return nil
	}
	m, err := txmanager.New(coordRs, txmanager.WithProtocol(protocol), txmanager.WithLastResource(llr), txmanager.WithAsyncCleanup(false),
		txmanager.WithFailpoints(hook), txmanager.WithTimeout(10*time.Second), txmanager.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	var gtid string
	done := runPaused(t, ctx, m, coordRs, key, &gtid, paused, txmanager.BeforeDecide)
	rs := openAll(t, ps)
	var cerr error
	var gateOnce sync.Once
	gated := gatedResource{Resource: rs[0], beforeInsert: func(mk resource.Marker) {
		if mk.State != resource.StateAbort {
			return
		}
		gateOnce.Do(func() {
			// The scan read no marker and found the branches prepared:
			// let the coordinator finish before its fence lands.
			close(release)
			select {
			case cerr = <-done:
			case <-time.After(30 * time.Second):
				t.Error("the coordinator did not finish")
			}
		})
	}}
	sc, err := recovery.New([]resource.Resource{gated, rs[1]}, recovery.WithHorizon(0), recovery.WithLogger(quiet), recovery.WithInstanceID("stale-scan"))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := sc.ScanOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fenced := false
	gateOnce.Do(func() { close(release); cerr = <-done })
	for _, tx := range rep.Transactions {
		fenced = fenced || tx.GTID == gtid
	}
	if !fenced {
		t.Logf("the stale scan did not see %s: the script's interleaving did not happen", gtid)
	}
	return judge(t, rs, key, gtid, cerr, rep.Transactions)
}

// staleListResource hands a scan the primary's marker listing taken
// before the decision: its ListMarkers reads the rows, then runs
// afterList (the test lets the coordinator decide there) before returning
// them.
type staleListResource struct {
	resource.Resource
	afterList func()
}

func (r staleListResource) ListMarkers(ctx context.Context) ([]resource.Marker, error) {
	ms, err := r.Resource.ListMarkers(ctx)
	if r.afterList != nil {
		r.afterList()
	}
	return ms, err
}

// TestSettleWithStalePrimaryListing scripts a scan whose marker listing
// of the primary predates the decision while its listing of the other
// participant follows the 3PC pre-commit (a scan lists the resources one
// after the other, or in parallel: either way the two reads are taken at
// different moments):
//
//  1. the coordinator has prepared every branch and is about to decide;
//  2. a scan lists the primary's markers: none;
//  3. the coordinator decides and writes the precommit row at the other
//     participant (3PC), then pauses;
//  4. the scan lists that participant's markers (precommit) and the
//     prepared branches, commits them, proves every participant
//     committed, and settles.
//
// Settling must turn the primary's decision row into a tombstone before
// it deletes the other participants' rows (their evidence rows with
// them): the scan never saw the primary's row, and skipping the tombstone
// then leaves the primary saying precommit beside a participant whose
// evidence is gone. Every later scan, and the coordinator, then report a
// heuristic outcome (with "restart the MariaDB server" advice) for a
// transaction committed everywhere.
func TestSettleWithStalePrimaryListing(t *testing.T) {
	pg := harness.Shared(t, harness.Postgres)
	my := harness.Shared(t, harness.MariaDB)
	// Names in this order: a sequential scan lists the primary first.
	ps := []part{newPart(t, pg, "sa_pg", crashTable), newPart(t, my, "sb_my", crashTable)}
	for _, llr := range []bool{false, true} {
		name := "3pc"
		if llr {
			name = "3pc-llr"
		}
		t.Run(name, func(t *testing.T) {
			for _, p := range stalePrimaryListing(t, ps, llr, "sl-"+name) {
				t.Error(p)
			}
		})
	}
	collectAborts(t, openAll(t, ps))
}

func stalePrimaryListing(t *testing.T, ps []part, llr bool, key string) []string {
	ctx := testCtx(t, time.Minute)
	coordRs := openAll(t, ps)
	atDecide, decide := make(chan struct{}), make(chan struct{})
	atPreCommit, finish := make(chan struct{}), make(chan struct{})
	var onceDecide, oncePre sync.Once
	hook := func(ctx context.Context, fp txmanager.Failpoint, gtid, res string) error {
		switch fp {
		case txmanager.BeforeDecide:
			onceDecide.Do(func() { close(atDecide); <-decide })
		case txmanager.AfterPreCommit:
			oncePre.Do(func() { close(atPreCommit); <-finish })
		}
		return nil
	}
	m, err := txmanager.New(coordRs, txmanager.WithProtocol(txmanager.ThreePC), txmanager.WithLastResource(llr), txmanager.WithAsyncCleanup(false),
		txmanager.WithFailpoints(hook), txmanager.WithTimeout(10*time.Second), txmanager.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	var gtid string
	done := runPaused(t, ctx, m, coordRs, key, &gtid, atDecide, txmanager.BeforeDecide)
	rs := openAll(t, ps)
	var onceList sync.Once
	stale := staleListResource{Resource: rs[0], afterList: func() {
		onceList.Do(func() {
			close(decide)
			select {
			case <-atPreCommit:
			case err := <-done:
				t.Errorf("coordinator finished (%v) without reaching %s", err, txmanager.AfterPreCommit)
			}
		})
	}}
	sc, err := recovery.New([]resource.Resource{stale, rs[1]}, recovery.WithSequential(), recovery.WithHorizon(0),
		recovery.WithLogger(quiet), recovery.WithInstanceID("stale-scan"))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := sc.ScanOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	close(finish)
	cerr := <-done
	return judge(t, rs, key, gtid, cerr, rep.Transactions)
}

// runPaused runs a transaction inserting key everywhere in the background
// and waits until its failpoint hook closes paused at where; it fails the
// test if the transaction ends first. The outcome arrives on done.
func runPaused(t *testing.T, ctx context.Context, m *txmanager.Manager, rs []resource.Resource, key string, gtid *string, paused <-chan struct{}, where txmanager.Failpoint) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx, insertEverywhere(rs, key, gtid)) }()
	select {
	case <-paused:
	case err := <-done:
		t.Fatalf("coordinator finished (%v) without reaching %s", err, where)
	}
	return done
}
