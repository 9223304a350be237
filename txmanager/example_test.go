package txmanager_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/threepc/threepc/drivers/mysql"
	"github.com/threepc/threepc/drivers/postgres"
	"github.com/threepc/threepc/recovery"
	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

// Needs servers, so no Output comment: TestExamplesRun runs it.

// A transfer between an account in PostgreSQL and one in MariaDB, atomic
// across both. The databases' URLs come from the environment.
func Example() {
	orders, err := postgres.Open("orders", os.Getenv("ORDERS_URL"), postgres.Config{}) // postgres://app@127.0.0.1:5432/orders
	if err != nil {
		log.Fatal(err)
	}
	defer orders.Close()
	billing, err := mysql.Open("billing", os.Getenv("BILLING_URL"), mysql.Config{}) // mysql://app:secret@127.0.0.1:3306/billing
	if err != nil {
		log.Fatal(err)
	}
	defer billing.Close()
	resources := []resource.Resource{orders, billing}
	ctx, shutdown := context.WithCancel(context.Background())
	defer shutdown() // at return: ends the background scans, then the resources close

	m, err := txmanager.New(resources) // 3PC by default; txmanager.WithProtocol(txmanager.TwoPC)
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close(context.WithoutCancel(ctx)) // flushes the background marker clean-up
	// At start-up: verify the set-up, then finish what a crashed instance
	// left behind before serving traffic.
	if err := m.Check(ctx); err != nil {
		log.Fatal(err)
	}

	sc, err := recovery.New(resources) // same resources, same names
	if err != nil {
		log.Fatal(err)
	}
	if _, err := sc.ScanOnce(ctx); err != nil {
		log.Fatal(err)
	}
	go sc.Run(ctx, time.Minute, nil) // scan every minute until ctx ends

	err = m.Run(ctx, func(ctx context.Context, tx *txmanager.Tx) error {
		if _, err := tx.DB("orders").ExecContext(ctx,
			"UPDATE accounts SET balance = balance - $1 WHERE id = $2", 100, 7); err != nil {
			return err
		}
		_, err := tx.DB("billing").ExecContext(ctx,
			"UPDATE accounts SET balance = balance + ? WHERE id = ?", 100, 42)
		return err
	})
	switch {
	case err == nil:
		fmt.Println("committed in both")
	case errors.Is(err, txmanager.ErrAborted):
		// Rolled back in both: safe to retry. An error of the function
		// itself comes back this way too, wrapped in an *AbortError.
	case errors.Is(err, txmanager.ErrCommitPending):
		// Committed; recovery finishes the remaining branches.
	case errors.Is(err, txmanager.ErrInDoubt):
		// Unknown; recovery decides one way for every branch. Do not retry
		// blindly: check the outcome first.
	case errors.Is(err, txmanager.ErrHeuristic):
		// Decided to commit, but a branch contradicts the decision (rolled
		// back outside threepc, or lost by its server): an operator's job,
		// see `threepc inspect`. Do not retry.
	}
}

// Queries is what sqlc generates: a type over the DBTX interface.
type Queries struct{ db resource.DBTX }

func (q *Queries) Debit(ctx context.Context, id, amount int64) error {
	_, err := q.db.ExecContext(ctx, "UPDATE accounts SET balance = balance - $1 WHERE id = $2", amount, id)
	return err
}

func (q *Queries) Balance(ctx context.Context, id int64) (int64, error) {
	var b int64
	err := q.db.QueryRowContext(ctx, "SELECT balance FROM accounts WHERE id = $1", id).Scan(&b)
	return b, err
}

// Needs a server, so no Output comment: TestExamplesRun runs it.

// Generated query code runs inside a distributed transaction unchanged:
// Tx.DB returns a handle that satisfies sqlc's DBTX interface, and so does
// a plain *sql.DB outside of one.
func ExampleTx_DB_sqlc() {
	ctx := context.Background()
	orders, err := postgres.Open("orders", os.Getenv("ORDERS_URL"), postgres.Config{}) // postgres://app@127.0.0.1:5432/orders
	if err != nil {
		log.Fatal(err)
	}
	defer orders.Close()
	m, err := txmanager.New([]resource.Resource{orders}) // and the application's other resources
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close(ctx)

	err = m.Run(ctx, func(ctx context.Context, tx *txmanager.Tx) error {
		q := &Queries{db: tx.DB("orders")} // inside the distributed transaction
		if err := q.Debit(ctx, 7, 100); err != nil {
			return err
		}
		b, err := q.Balance(ctx, 7)
		if err == nil && b < 0 {
			err = errors.New("insufficient funds") // rolls back the debit
		}
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
	q := &Queries{db: orders.DB()} // outside: the plain pool
	b, err := q.Balance(ctx, 7)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("balance of account 7:", b)
}

// Needs a server, so no Output comment: TestExamplesRun runs it.

// The explicit form, for code that cannot be written as one function.
func ExampleManager_Begin() {
	ctx := context.Background()
	orders, err := postgres.Open("orders", os.Getenv("ORDERS_URL"), postgres.Config{}) // postgres://app@127.0.0.1:5432/orders
	if err != nil {
		log.Fatal(err)
	}
	defer orders.Close()
	m, err := txmanager.New([]resource.Resource{orders}) // and the application's other resources
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close(ctx)

	tx, err := m.Begin(ctx)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := tx.DB("orders").ExecContext(ctx, "INSERT INTO orders (id) VALUES (1)"); err != nil {
		_ = tx.Rollback(ctx)
		log.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		var ae *txmanager.AbortError
		if errors.As(err, &ae) {
			log.Fatalf("aborted by %s in %s: %v", ae.Resource, ae.Phase, ae.Err)
		}
		log.Fatal(err)
	}
	fmt.Println("order 1 committed")
}
