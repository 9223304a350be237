package postgres_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"os"

	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx" with database/sql

	"github.com/threepc/threepc/drivers/postgres"
	"github.com/threepc/threepc/migrations"
	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

// Open makes no connection: it parses the URL and names the resource.
// Check, at start-up, is what talks to the server.
func ExampleOpen() {
	orders, err := postgres.Open("orders", "postgres://app:secret@127.0.0.1:5432/orders?sslmode=disable", postgres.Config{MaxOpenConns: 20})
	if err != nil {
		log.Fatal(err)
	}
	defer orders.Close()
	fmt.Println(orders.Name(), orders.System(), orders.ServerAddress(), orders.DatabaseName())
	// Output: orders postgresql 127.0.0.1:5432 orders
}

// The resource name is part of every branch id, so it is checked first.
func ExampleOpen_invalidName() {
	_, err := postgres.Open("Orders DB", "postgres://app@127.0.0.1:5432/orders", postgres.Config{})
	fmt.Println(errors.Is(err, resource.ErrInvalidName))
	fmt.Println(err)
	// Output:
	// true
	// threepc: invalid resource name "Orders DB": want lowercase letters, digits, '_' or '-', starting with a letter
}

// New takes a pool the application already has (pgx's database/sql
// driver); Close leaves it open.
func ExampleNew() {
	db, err := sql.Open("pgx", "postgres://app@127.0.0.1:5432/orders")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	orders, err := postgres.New("orders", db, postgres.Config{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(orders.Name(), orders.DB() == db)
	// Output: orders true
}

// Needs a server, so no Output comment: TestExamplesRun runs it.

// A PostgreSQL database in a distributed transaction: check the set-up,
// create the marker table, then write through the transaction's handle.
func Example() {
	ctx := context.Background()
	orders, err := postgres.Open("orders", os.Getenv("ORDERS_URL"), postgres.Config{}) // postgres://app@127.0.0.1:5432/orders
	if err != nil {
		log.Fatal(err)
	}
	defer orders.Close()
	// The marker table first (idempotent), then the start-up check:
	// reachable, max_prepared_transactions > 0, marker table present.
	if err := migrations.Up(ctx, orders.DB(), migrations.DialectPostgres); err != nil {
		log.Fatal(err)
	}
	switch err := orders.Check(ctx); {
	case errors.Is(err, resource.ErrPreparedTransactionsDisabled):
		log.Fatal("set max_prepared_transactions > 0 and restart PostgreSQL: ", err)
	case errors.Is(err, resource.ErrConnectionRejected):
		log.Fatal("fix the URL, the user or its grants: ", err) // retrying will not help
	case err != nil:
		log.Fatal(err)
	}
	// In real use a second resource takes part (see package txmanager).
	m, err := txmanager.New([]resource.Resource{orders})
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close(ctx)
	err = m.Run(ctx, func(ctx context.Context, tx *txmanager.Tx) error {
		_, err := tx.DB("orders").ExecContext(ctx, "UPDATE accounts SET balance = balance - $1 WHERE id = $2", 100, 7)
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("debited account 7")
}
