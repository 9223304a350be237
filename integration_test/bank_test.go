package integration_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

// The bank: accounts in a PostgreSQL and a MariaDB database, and a ledger
// row per transfer in both, so that a transfer's outcome can be read in
// each database separately after the fact.
const (
	accountsDDL    = "CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL)"
	ledgerDDL      = "CREATE TABLE ledger (id VARCHAR(40) PRIMARY KEY)"
	bankAccounts   = 20
	initialBalance = 1000
)

// seedBank fills the accounts of every resource.
func seedBank(t *testing.T, rs []resource.Resource) {
	t.Helper()
	ctx := testCtx(t, time.Minute)
	for _, r := range rs {
		var vals []string
		for i := range bankAccounts {
			vals = append(vals, fmt.Sprintf("(%d, %d)", i, initialBalance))
		}
		if _, err := resource.DBOf(r).ExecContext(ctx, "INSERT INTO accounts (id, balance) VALUES "+strings.Join(vals, ", ")); err != nil {
			t.Fatalf("seed %s: %v", r.Name(), err)
		}
	}
}

// outcome is what the coordinator told a worker about one transfer.
type outcome int

const (
	outCommitted  outcome = iota // nil
	outPending                   // ErrCommitPending: decided commit
	outAborted                   // ErrAborted
	outInDoubt                   // ErrInDoubt
	outWorkFailed                // a statement failed: rolled back before any vote
	outHeuristic                 // ErrHeuristic: a branch contradicts the commit decision
	outUnclassified
)

var outcomeNames = []string{"committed", "commit-pending", "aborted", "in-doubt", "work-failed", "HEURISTIC", "UNCLASSIFIED"}

// workError marks errors of the transfer's own statements, which Run
// returns unchanged.
type workError struct{ err error }

func (e workError) Error() string { return "work: " + e.err.Error() }
func (e workError) Unwrap() error { return e.err }

func classify(err error) outcome {
	if we := (workError{}); errors.As(err, &we) {
		return outWorkFailed
	}
	switch txmanager.OutcomeOf(err) {
	case txmanager.OutcomeCommitted:
		return outCommitted
	case txmanager.OutcomeCommitPending:
		return outPending
	case txmanager.OutcomeAborted:
		return outAborted
	case txmanager.OutcomeInDoubt:
		return outInDoubt
	case txmanager.OutcomeHeuristic:
		return outHeuristic
	}
	return outUnclassified
}

// workload runs transfers between the two resources of the managers
// until stop is closed. Even workers enlist PostgreSQL first (it is the
// primary), odd workers MariaDB; each half of the workers has its own
// half of the accounts, so the lock order is fixed and no distributed
// deadlock can form (the transaction timeout would break one, slowly).
type workload struct {
	mu         sync.Mutex
	outcomes   map[string]outcome
	gtids      map[string]string // transfer id -> gtid
	counts     [outUnclassified + 1]int
	unexpected []string
	done       chan struct{} // closed when every worker has returned
}

func runWorkload(t *testing.T, managers []*txmanager.Manager, pgName, myName string, workers int, stop <-chan struct{}) *workload {
	w := &workload{outcomes: map[string]outcome{}, gtids: map[string]string{}, done: make(chan struct{})}
	var wg sync.WaitGroup
	var seq atomic.Int64
	for id := range workers {
		m := managers[id%len(managers)]
		first, second := pgName, myName
		if id%2 == 1 {
			first, second = myName, pgName
		}
		lo := (id % 2) * bankAccounts / 2
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(id), uint64(time.Now().UnixNano())))
			for {
				select {
				case <-stop:
					return
				default:
				}
				tid := fmt.Sprintf("w%d-%d", id, seq.Add(1))
				a, b := lo+rng.IntN(bankAccounts/2), lo+rng.IntN(bankAccounts/2)
				amount := 1 + rng.IntN(50)
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				err := m.Run(ctx, func(ctx context.Context, tx *txmanager.Tx) error {
					w.mu.Lock()
					w.gtids[tid] = tx.GTID()
					w.mu.Unlock()
					p := func(res string, i int) string {
						if res == pgName {
							return fmt.Sprintf("$%d", i)
						}
						return "?"
					}
					steps := []struct {
						res, q string
						args   []any
					}{
						{first, "UPDATE accounts SET balance = balance - " + p(first, 1) + " WHERE id = " + p(first, 2), []any{amount, a}},
						{first, "INSERT INTO ledger (id) VALUES (" + p(first, 1) + ")", []any{tid}},
						{second, "UPDATE accounts SET balance = balance + " + p(second, 1) + " WHERE id = " + p(second, 2), []any{amount, b}},
						{second, "INSERT INTO ledger (id) VALUES (" + p(second, 1) + ")", []any{tid}},
					}
					for _, s := range steps {
						if _, err := tx.DB(s.res).ExecContext(ctx, s.q, s.args...); err != nil {
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
				if o == outUnclassified || o == outHeuristic {
					w.unexpected = append(w.unexpected, err.Error())
				}
				w.mu.Unlock()
				if err != nil {
					time.Sleep(time.Duration(20+rng.IntN(40)) * time.Millisecond) // no retry storm against a down server
				}
			}
		})
	}
	go func() { wg.Wait(); close(w.done) }()
	return w
}

// wait waits for every worker to return.
func (w *workload) wait(t *testing.T) {
	t.Helper()
	select {
	case <-w.done:
	case <-time.After(60 * time.Second):
		t.Fatal("workers did not stop within 60 s")
	}
}

func (w *workload) summary() string {
	var parts []string
	for o, n := range w.counts {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", outcomeNames[o], n))
		}
	}
	return strings.Join(parts, " ")
}

// checkBank asserts the end state after recovery: every transfer is in
// both ledgers or in neither (no mixed outcome), a transfer reported
// committed is in, one reported aborted is out, the total balance is
// conserved, and nothing is prepared or marked but abort rows.
func checkBank(t *testing.T, w *workload, rs []resource.Resource) (mixedGTIDs []string) {
	t.Helper()
	ctx := testCtx(t, time.Minute)
	ledgers, total := readLedgers(t, ctx, rs)
	for id := range ledgers[0] {
		if !ledgers[1][id] {
			mixedGTIDs = append(mixedGTIDs, w.gtids[id])
			t.Errorf("MIXED OUTCOME: transfer %s (gtid %s) committed at %s only (coordinator said %s)", id, w.gtids[id], rs[0].Name(), outcomeNames[w.outcomes[id]])
		}
	}
	for id := range ledgers[1] {
		if !ledgers[0][id] {
			mixedGTIDs = append(mixedGTIDs, w.gtids[id])
			t.Errorf("MIXED OUTCOME: transfer %s (gtid %s) committed at %s only (coordinator said %s)", id, w.gtids[id], rs[1].Name(), outcomeNames[w.outcomes[id]])
		}
	}
	for id, o := range w.outcomes {
		in := ledgers[0][id]
		switch o {
		case outCommitted, outPending:
			if !in {
				t.Errorf("transfer %s reported %s but absent", id, outcomeNames[o])
			}
		case outAborted, outWorkFailed:
			if in {
				t.Errorf("transfer %s reported %s but committed", id, outcomeNames[o])
			}
		}
	}
	if want := len(rs) * bankAccounts * initialBalance; total != want {
		t.Errorf("total balance %d, want %d: money created or destroyed", total, want)
	}
	if len(w.unexpected) > 0 {
		// Nothing outside threepc touches the bank's branches: a
		// heuristic outcome is a bug too.
		t.Errorf("%d errors outside the outcome classes (ErrAborted, ErrInDoubt, ErrCommitPending) or heuristic, e.g. %q", len(w.unexpected), w.unexpected[:min(5, len(w.unexpected))])
	}
	if w.counts[outCommitted] == 0 {
		t.Errorf("no transfer committed: the workload did not run")
	}
	checkClean(t, ctx, rs)
	t.Logf("transfers: %s; %d in the ledgers; total balance %d", w.summary(), len(ledgers[0]), total)
	return mixedGTIDs
}

// readLedgers reads every resource's ledger ids and the total balance of
// its accounts.
func readLedgers(t *testing.T, ctx context.Context, rs []resource.Resource) (ledgers []map[string]bool, total int) {
	t.Helper()
	ledgers = make([]map[string]bool, len(rs))
	for i, r := range rs {
		ledgers[i] = map[string]bool{}
		rows, err := resource.DBOf(r).QueryContext(ctx, "SELECT id FROM ledger")
		if err != nil {
			t.Fatalf("ledger of %s: %v", r.Name(), err)
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				t.Fatal(err)
			}
			ledgers[i][id] = true
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		rows.Close()
		var sum int
		if err := resource.DBOf(r).QueryRowContext(ctx, "SELECT COALESCE(SUM(balance), 0) FROM accounts").Scan(&sum); err != nil {
			t.Fatal(err)
		}
		total += sum
	}
	return ledgers, total
}
