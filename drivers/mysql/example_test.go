package mysql_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"os"

	mysqldriver "github.com/go-sql-driver/mysql"

	"github.com/threepc/threepc/drivers/mysql"
	"github.com/threepc/threepc/migrations"
	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

// Open takes a mysql:// or mariadb:// URL (or a go-sql-driver DSN) and
// makes no connection. System says "mysql" until the resource has talked
// to the server, then "mariadb" or "mysql".
func ExampleOpen() {
	billing, err := mysql.Open("billing", "mariadb://app:secret@127.0.0.1:3306/billing?timeout=5s", mysql.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer billing.Close()
	fmt.Println(billing.Name(), billing.System(), billing.ServerAddress(), billing.DatabaseName())
	// Output: billing mysql 127.0.0.1:3306 billing
}

// ParseURL gives the go-sql-driver configuration Open uses: the port
// defaults to 3306, parameters pass through as DSN parameters.
func ExampleParseURL() {
	cfg, err := mysql.ParseURL("mysql://app:secret@db.internal/billing?timeout=5s")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(cfg.User, cfg.Addr, cfg.DBName, cfg.Timeout)
	// Output: app db.internal:3306 billing 5s
}

// New takes a pool the application already has (go-sql-driver/mysql);
// Close leaves it open. Without multiStatements in its DSN every prepare
// costs one more round trip.
func ExampleNew() {
	db, err := sql.Open("mysql", "app:secret@tcp(127.0.0.1:3306)/billing?multiStatements=true")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	billing, err := mysql.New("billing", db, mysql.Config{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(billing.Name(), billing.DB() == db)
	// Output: billing true
}

// Needs a server, so no Output comment: TestExamplesRun runs it.

// A MySQL 8 or MariaDB database in a distributed transaction: create the
// marker table, check the set-up, then write through the transaction's
// handle. Errors keep the server's error number.
func Example() {
	ctx := context.Background()
	billing, err := mysql.Open("billing", os.Getenv("BILLING_URL"), mysql.Config{}) // mysql://app:secret@127.0.0.1:3306/billing
	if err != nil {
		log.Fatal(err)
	}
	defer billing.Close()
	if err := migrations.Up(ctx, billing.DB(), migrations.DialectMySQL); err != nil {
		log.Fatal(err)
	}
	switch err := billing.Check(ctx); {
	case errors.Is(err, resource.ErrMissingPrivilege):
		log.Fatal("grant what the message names (MySQL 8: XA_RECOVER_ADMIN): ", err)
	case errors.Is(err, resource.ErrConnectionRejected):
		log.Fatal("fix the URL, the user or its grants: ", err) // retrying will not help
	case err != nil:
		log.Fatal(err)
	}
	// In real use a second resource takes part (see package txmanager).
	m, err := txmanager.New([]resource.Resource{billing})
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close(ctx)
	err = m.Run(ctx, func(ctx context.Context, tx *txmanager.Tx) error {
		_, err := tx.DB("billing").ExecContext(ctx, "UPDATE accounts SET balance = balance + ? WHERE id = ?", 100, 42)
		var me *mysqldriver.MySQLError
		if errors.As(err, &me) && me.Number == 1146 {
			return fmt.Errorf("no accounts table: %w", err)
		}
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("credited account 42")
}
