package txmanager_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/threepc/threepc/drivers/mysql"
	"github.com/threepc/threepc/drivers/postgres"
	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/migrations"
	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

// These tests run the coordinator against real throwaway PostgreSQL and
// MariaDB servers (package harness). The model tests in model_test.go need
// no server.

func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }

var quietLog = slog.New(slog.NewTextHandler(logSink(), nil))

// pair opens a fresh PostgreSQL database "pg" and a fresh MariaDB
// database "maria", migrated, with a bank table of n accounts each.
func pair(t *testing.T, accounts int) (pg, maria resource.Resource) {
	t.Helper()
	ctx := context.Background()
	pgSrv := harness.Shared(t, harness.Postgres)
	mdSrv := harness.Shared(t, harness.MariaDB)
	var err error
	pg, err = postgres.Open("pg", pgSrv.DSN(pgSrv.NewDatabase(t)), postgres.Config{})
	if err != nil {
		t.Fatal(err)
	}
	maria, err = mysql.Open("maria", mdSrv.DSN(mdSrv.NewDatabase(t)), mysql.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resource.Close(pg); resource.Close(maria) })
	for _, r := range []resource.Resource{pg, maria} {
		d := migrations.DialectMySQL
		if r.System() == "postgresql" {
			d = migrations.DialectPostgres
		}
		if err := migrations.Up(ctx, resource.DBOf(r), d); err != nil {
			t.Fatal(err)
		}
		exec(t, resource.DBOf(r), "CREATE TABLE accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)")
		var vals []string
		for i := 1; i <= accounts; i++ {
			vals = append(vals, fmt.Sprintf("(%d, 1000)", i))
		}
		exec(t, resource.DBOf(r), "INSERT INTO accounts (id, balance) VALUES "+strings.Join(vals, ","))
		if err := r.Check(ctx); err != nil {
			t.Fatalf("Check %s: %v", r.Name(), err)
		}
	}
	return pg, maria
}

func exec(t *testing.T, db *sql.DB, q string) {
	t.Helper()
	if _, err := db.ExecContext(context.Background(), q); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func total(t *testing.T, rs ...resource.Resource) int64 {
	t.Helper()
	var sum int64
	for _, r := range rs {
		var s int64
		if err := resource.DBOf(r).QueryRow("SELECT COALESCE(SUM(balance), 0) FROM accounts").Scan(&s); err != nil {
			t.Fatal(err)
		}
		sum += s
	}
	return sum
}

func balance(t *testing.T, r resource.Resource, id int) int64 {
	t.Helper()
	var b int64
	if err := resource.DBOf(r).QueryRow(fmt.Sprintf("SELECT balance FROM accounts WHERE id = %d", id)).Scan(&b); err != nil {
		t.Fatal(err)
	}
	return b
}

// assertClean checks invariant 4 of PROTOCOL.md on real databases: no
// prepared branch and no marker row left but committed tombstones.
func assertClean(t *testing.T, rs ...resource.Resource) {
	t.Helper()
	ctx := context.Background()
	for _, r := range rs {
		prepared, err := r.Recover(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(prepared) > 0 {
			t.Errorf("%s: %d prepared branches left, first %v", r.Name(), len(prepared), prepared[0].XID)
		}
		markers, err := r.ListMarkers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// A committed transaction leaves its primary's decision row as a
		// tombstone (with the primary's own evidence row) for the
		// retention period; nothing else may stay.
		tombstones := map[string]bool{}
		for _, m := range markers {
			if m.State != resource.StateCommitted || m.Primary != r.Name() {
				t.Errorf("%s: marker row left: %+v", r.Name(), m)
			}
			tombstones[m.GTID] = true
		}
		rows, err := resource.DBOf(r).QueryContext(ctx, "SELECT gtid, branch, state FROM "+resource.MarkerTable+" WHERE branch <> ''")
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var gtid, branch, state string
			if err := rows.Scan(&gtid, &branch, &state); err != nil {
				t.Fatal(err)
			}
			if !tombstones[gtid] || branch != r.Name() {
				t.Errorf("%s: evidence row left: gtid %s branch %s state %s", r.Name(), gtid, branch, state)
			}
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		rows.Close()
	}
}

// assertUntouched checks that an aborted transaction left account 1 of
// both databases as seeded, and nothing prepared or marked.
func assertUntouched(t *testing.T, pg, maria resource.Resource, why string) {
	t.Helper()
	if balance(t, pg, 1) != 1000 || balance(t, maria, 1) != 1000 {
		t.Fatal(why)
	}
	assertClean(t, pg, maria)
}

func ph(r resource.Resource, n int) string {
	if r.System() == "postgresql" {
		return fmt.Sprintf("$%d", n)
	}
	return "?"
}

// transfer moves amount from account a on one resource to account b on
// the other.
func transfer(ctx context.Context, tx *txmanager.Tx, from, to resource.Resource, a, b int, amount int64) error {
	if _, err := tx.DB(from.Name()).ExecContext(ctx,
		"UPDATE accounts SET balance = balance - "+ph(from, 1)+" WHERE id = "+ph(from, 2), amount, a); err != nil {
		return err
	}
	_, err := tx.DB(to.Name()).ExecContext(ctx,
		"UPDATE accounts SET balance = balance + "+ph(to, 1)+" WHERE id = "+ph(to, 2), amount, b)
	return err
}

func newManager(t *testing.T, rs []resource.Resource, opts ...txmanager.Option) *txmanager.Manager {
	t.Helper()
	// The tests here check the marker rows as soon as Commit returns:
	// synchronous clean-up, unless a test asks for the default.
	base := []txmanager.Option{txmanager.WithLogger(quietLog), txmanager.WithAsyncCleanup(false)}
	m, err := txmanager.New(rs, append(base, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestBankTransfers: 8 workers transfer money between a PostgreSQL and a
// MariaDB database, in both protocols. Money is conserved, every worker
// gets a definite answer, and nothing is left prepared or marked.
func TestBankTransfers(t *testing.T) {
	variants := []struct {
		name string
		opts []txmanager.Option
	}{
		// The defaults: logging last resource, batched marker rows,
		// asynchronous clean-up (flushed by Close below).
		{"3pc", []txmanager.Option{txmanager.WithProtocol(txmanager.ThreePC), txmanager.WithAsyncCleanup(true)}},
		{"2pc", []txmanager.Option{txmanager.WithProtocol(txmanager.TwoPC), txmanager.WithAsyncCleanup(true)}},
		// Batched decisions without logging last resource.
		{"3pc-nollr", []txmanager.Option{txmanager.WithProtocol(txmanager.ThreePC), txmanager.WithLastResource(false)}},
		{"2pc-nollr", []txmanager.Option{txmanager.WithProtocol(txmanager.TwoPC), txmanager.WithLastResource(false)}},
		// Every optimization off.
		{"3pc-plain", []txmanager.Option{txmanager.WithProtocol(txmanager.ThreePC),
			txmanager.WithLastResource(false), txmanager.WithBatching(false)}},
		{"2pc-plain", []txmanager.Option{txmanager.WithProtocol(txmanager.TwoPC),
			txmanager.WithLastResource(false), txmanager.WithBatching(false)}},
	}
	for _, v := range variants {
		proto := v.name
		t.Run(v.name, func(t *testing.T) {
			const accounts, workers, perWorker = 20, 8, 25
			pg, maria := pair(t, accounts)
			rs := []resource.Resource{pg, maria}
			m := newManager(t, rs, append(v.opts, txmanager.WithTimeout(5*time.Second))...)
			before := total(t, pg, maria)
			var committed, aborted atomic.Int64
			var wg sync.WaitGroup
			errs := make(chan error, workers*perWorker)
			for w := 0; w < workers; w++ {
				wg.Go(func() {
					rng := rand.New(rand.NewPCG(uint64(w), 1))
					for i := 0; i < perWorker; i++ {
						from, to := rs[rng.IntN(2)], rs[0]
						if from == rs[0] {
							to = rs[1]
						}
						err := m.Run(context.Background(), func(ctx context.Context, tx *txmanager.Tx) error {
							return transfer(ctx, tx, from, to, 1+rng.IntN(accounts), 1+rng.IntN(accounts), int64(1+rng.IntN(50)))
						})
						switch {
						case err == nil:
							committed.Add(1)
						case errors.Is(err, txmanager.ErrAborted) || isLockConflict(err):
							aborted.Add(1)
						default:
							errs <- err
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Errorf("no definite answer: %v", err)
			}
			if err := m.Close(context.Background()); err != nil {
				t.Fatalf("Close: %v", err) // flushes asynchronous clean-up
			}
			if got := total(t, pg, maria); got != before {
				t.Fatalf("money not conserved: %d before, %d after", before, got)
			}
			if committed.Load() == 0 {
				t.Fatal("no transfer committed")
			}
			assertClean(t, pg, maria)
			t.Logf("%s: %d committed, %d aborted", proto, committed.Load(), aborted.Load())
		})
	}
}

// isLockConflict: a deadlock or lock timeout reported by one database
// during the work phase (a local deadlock, which the database detects
// itself); Run rolled everything back.
func isLockConflict(err error) bool {
	s := err.Error()
	return strings.Contains(s, "deadlock") || strings.Contains(s, "1213") || strings.Contains(s, "40P01") || strings.Contains(s, "1205")
}

func TestAbortOnSQLError(t *testing.T) {
	pg, maria := pair(t, 2)
	m := newManager(t, []resource.Resource{pg, maria})
	err := m.Run(context.Background(), func(ctx context.Context, tx *txmanager.Tx) error {
		if err := transfer(ctx, tx, pg, maria, 1, 1, 10); err != nil {
			return err
		}
		_, err := tx.DB("maria").ExecContext(ctx, "UPDATE no_such_table SET x = 1")
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "no_such_table") {
		t.Fatalf("want the SQL error back, got %v", err)
	}
	assertUntouched(t, pg, maria, "work of an aborted transaction is visible")
}

// TestAbortWhenBranchRefusesToPrepare: PostgreSQL cannot prepare a
// transaction that used a temporary table; the whole transaction aborts
// and the error names the branch and the phase.
func TestAbortWhenBranchRefusesToPrepare(t *testing.T) {
	pg, maria := pair(t, 2)
	m := newManager(t, []resource.Resource{pg, maria})
	err := m.Run(context.Background(), func(ctx context.Context, tx *txmanager.Tx) error {
		if err := transfer(ctx, tx, maria, pg, 1, 1, 10); err != nil {
			return err
		}
		_, err := tx.DB("pg").ExecContext(ctx, "CREATE TEMPORARY TABLE scratch (x int)")
		return err
	})
	var ae *txmanager.AbortError
	if !errors.As(err, &ae) || !errors.Is(err, txmanager.ErrAborted) {
		t.Fatalf("want an AbortError, got %v", err)
	}
	if ae.Resource != "pg" || ae.Phase != resource.PhasePrepare || !errors.Is(err, resource.ErrPrepareRefused) {
		t.Fatalf("abort should name pg, prepare and ErrPrepareRefused: %+v", ae)
	}
	assertUntouched(t, pg, maria, "work of an aborted transaction is visible")
}

func TestAbortOnPanic(t *testing.T) {
	pg, maria := pair(t, 2)
	m := newManager(t, []resource.Resource{pg, maria})
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Fatalf("want the panic re-raised, got %v", r)
			}
		}()
		_ = m.Run(context.Background(), func(ctx context.Context, tx *txmanager.Tx) error {
			if err := transfer(ctx, tx, pg, maria, 1, 1, 10); err != nil {
				return err
			}
			panic("boom")
		})
	}()
	assertUntouched(t, pg, maria, "work of a panicked transaction is visible")
}

func TestAbortWhenContextCancelledBeforeDecision(t *testing.T) {
	pg, maria := pair(t, 2)
	ctx, cancel := context.WithCancel(context.Background())
	m := newManager(t, []resource.Resource{pg, maria}, txmanager.WithFailpoints(
		func(_ context.Context, fp txmanager.Failpoint, _, _ string) error {
			if fp == txmanager.AfterPrepare {
				cancel() // the caller gives up while the branches vote
			}
			return nil
		}))
	err := m.Run(ctx, func(ctx context.Context, tx *txmanager.Tx) error {
		return transfer(ctx, tx, pg, maria, 1, 1, 10)
	})
	if !errors.Is(err, txmanager.ErrAborted) || !errors.Is(err, context.Canceled) {
		t.Fatalf("want an abort caused by the cancellation, got %v", err)
	}
	assertUntouched(t, pg, maria, "work of an aborted transaction is visible")
}

// TestCommitSurvivesCancelAfterDecision: past the commit point the
// caller's cancellation no longer matters: every branch commits.
func TestCommitSurvivesCancelAfterDecision(t *testing.T) {
	for _, proto := range []txmanager.Protocol{txmanager.ThreePC, txmanager.TwoPC} {
		t.Run(string(proto), func(t *testing.T) {
			pg, maria := pair(t, 2)
			ctx, cancel := context.WithCancel(context.Background())
			m := newManager(t, []resource.Resource{pg, maria}, txmanager.WithProtocol(proto), txmanager.WithFailpoints(
				func(_ context.Context, fp txmanager.Failpoint, _, _ string) error {
					if fp == txmanager.AfterDecide {
						cancel()
					}
					return nil
				}))
			err := m.Run(ctx, func(ctx context.Context, tx *txmanager.Tx) error {
				return transfer(ctx, tx, pg, maria, 1, 2, 10)
			})
			if err != nil {
				t.Fatalf("commit after the decision must succeed despite the cancel: %v", err)
			}
			if balance(t, pg, 1) != 990 || balance(t, maria, 2) != 1010 {
				t.Fatal("transfer not committed on both databases")
			}
			assertClean(t, pg, maria)
		})
	}
}

func TestAbortOnTransactionTimeout(t *testing.T) {
	pg, maria := pair(t, 2)
	m := newManager(t, []resource.Resource{pg, maria}, txmanager.WithTimeout(300*time.Millisecond))
	err := m.Run(context.Background(), func(ctx context.Context, tx *txmanager.Tx) error {
		if err := transfer(ctx, tx, pg, maria, 1, 1, 10); err != nil {
			return err
		}
		time.Sleep(400 * time.Millisecond) // slow user code
		return nil
	})
	if !errors.Is(err, txmanager.ErrAborted) || !errors.Is(err, txmanager.ErrTimeout) {
		t.Fatalf("want an abort by timeout, got %v", err)
	}
	assertClean(t, pg, maria)
	if balance(t, pg, 1) != 1000 {
		t.Fatal("work of a timed-out transaction is visible")
	}
}

// TestDistributedDeadlock: transaction A locks a PostgreSQL row then
// wants a MariaDB row; B locks that MariaDB row then wants A's PostgreSQL
// row. Neither database sees the cycle. The transaction timeout must break
// it within timeout + 1 s, with an error that says so, and leave nothing
// behind.
func TestDistributedDeadlock(t *testing.T) {
	pg, maria := pair(t, 2)
	const timeout = 2 * time.Second
	m := newManager(t, []resource.Resource{pg, maria}, txmanager.WithTimeout(timeout))
	bothLocked := sync.WaitGroup{}
	bothLocked.Add(2)
	run := func(first, second resource.Resource) error {
		return m.Run(context.Background(), func(ctx context.Context, tx *txmanager.Tx) error {
			if _, err := tx.DB(first.Name()).ExecContext(ctx, "UPDATE accounts SET balance = balance + 1 WHERE id = 1"); err != nil {
				bothLocked.Done()
				return err
			}
			bothLocked.Done()
			bothLocked.Wait()
			_, err := tx.DB(second.Name()).ExecContext(ctx, "UPDATE accounts SET balance = balance - 1 WHERE id = 1")
			return err
		})
	}
	start := time.Now()
	errs := make(chan error, 2)
	go func() { errs <- run(pg, maria) }()
	go func() { errs <- run(maria, pg) }()
	var got []error
	for i := 0; i < 2; i++ {
		got = append(got, <-errs)
	}
	elapsed := time.Since(start)
	if elapsed > timeout+time.Second {
		t.Fatalf("deadlock took %v to break, want <= %v", elapsed, timeout+time.Second)
	}
	timedOut := 0
	for _, err := range got {
		if err != nil && errors.Is(err, txmanager.ErrTimeout) && errors.Is(err, txmanager.ErrAborted) {
			timedOut++
			if !strings.Contains(err.Error(), "distributed deadlock") {
				t.Errorf("the timeout error should mention distributed deadlocks: %v", err)
			}
		}
	}
	if timedOut == 0 {
		t.Fatalf("want at least one transaction aborted by the timeout, got %v", got)
	}
	t.Logf("broken after %v: %v", elapsed.Round(time.Millisecond), got)
	if s := total(t, pg, maria); s != 4000 {
		t.Fatalf("money changed: %d", s)
	}
	assertClean(t, pg, maria)
}

// TestOnePhaseAndReadOnly: one participant commits locally with no
// prepare and no marker; a read-only branch leaves after the vote.
func TestOnePhaseAndReadOnly(t *testing.T) {
	pg, maria := pair(t, 2)
	var seen []txmanager.Failpoint
	var mu sync.Mutex
	m := newManager(t, []resource.Resource{pg, maria}, txmanager.WithFailpoints(
		func(_ context.Context, fp txmanager.Failpoint, _, _ string) error {
			mu.Lock()
			seen = append(seen, fp)
			mu.Unlock()
			return nil
		}))
	ctx := context.Background()
	err := m.Run(ctx, func(ctx context.Context, tx *txmanager.Tx) error {
		_, err := tx.DB("pg").ExecContext(ctx, "UPDATE accounts SET balance = 500 WHERE id = 1")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != 1 || seen[0] != txmanager.BeforeOnePhase {
		t.Fatalf("one participant should commit one-phase, steps %v", seen)
	}
	seen = nil
	err = m.Run(ctx, func(ctx context.Context, tx *txmanager.Tx) error {
		var b int64
		if err := tx.DB("maria").QueryRowContext(ctx, "SELECT balance FROM accounts WHERE id = 1").Scan(&b); err != nil {
			return err
		}
		_, err := tx.DB("pg").ExecContext(ctx, "UPDATE accounts SET balance = $1 WHERE id = 2", b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if balance(t, pg, 2) != 1000 || balance(t, pg, 1) != 500 {
		t.Fatal("wrong balances")
	}
	assertClean(t, pg, maria)
}

func logSink() io.Writer {
	if os.Getenv("THREEPC_TEST_LOG") != "" {
		return os.Stderr
	}
	return io.Discard
}
