// Package bank is the transfer workload of the threepc command: accounts
// spread over several databases, and transfers that move money between
// two of them in one distributed transaction. The sum of all balances is
// the invariant: it never changes if every transaction is atomic.
//
// The package is shared by `threepc bank`, `threepc bench` and
// `threepc demo`, and is meant to be reused by Go benchmarks.
package bank

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/threepc/threepc/resource"
)

// Table names. They carry the product prefix so they never collide with
// an application's tables.
const (
	AccountsTable = "threepc_bank_accounts"
	MetaTable     = "threepc_bank_meta"
	// LedgerTable holds one row per transfer leg, inserted by the leg
	// itself inside its branch: a transfer is atomic iff its row is in
	// every database it touched or in none.
	LedgerTable = "threepc_bank_ledger"
	// OutcomeTable holds what the client was told about each transfer
	// (see outcomeRecorder).
	OutcomeTable = "threepc_bank_outcomes"
)

// InitialBalance is the balance every account is seeded with.
const InitialBalance = 1000

// ErrAlreadySetUp: Setup found bank tables with rows and was not asked to
// reset them.
var ErrAlreadySetUp = errors.New("threepc/bank: bank already set up")

// ErrNotSetUp: the bank tables are missing or empty.
var ErrNotSetUp = errors.New("threepc/bank: bank not set up")

// Dialect tells the SQL flavour of a resource: "postgres" or "mysql"
// (MySQL and MariaDB).
func Dialect(r resource.Resource) string {
	if r.System() == "postgresql" {
		return "postgres"
	}
	return "mysql"
}

// State is the bank as stored in one database.
type State struct {
	Resource string
	Accounts int64 // seeded number of accounts (meta)
	Seeded   int64 // seeded total (meta)
	Total    int64 // current sum of balances
	Rows     int64 // current number of account rows
}

// Read reads the bank's state in one database. ErrNotSetUp when the
// tables are missing or the meta rows absent.
func Read(ctx context.Context, r resource.Resource) (State, error) {
	st := State{Resource: r.Name()}
	db := resource.DBOf(r)
	exists, err := tableExists(ctx, r, MetaTable)
	if err != nil {
		return st, err
	}
	if !exists {
		return st, fmt.Errorf("%w in %q: run `threepc bank setup`", ErrNotSetUp, r.Name())
	}
	for _, t := range []string{LedgerTable, OutcomeTable} {
		exists, err := tableExists(ctx, r, t)
		if err != nil {
			return st, err
		}
		if !exists {
			return st, fmt.Errorf("%w in %q: %s is missing (a bank set up by an older threepc): run `threepc bank setup --reset`", ErrNotSetUp, r.Name(), t)
		}
	}
	rows, err := db.QueryContext(ctx, "SELECT name, value FROM "+MetaTable)
	if err != nil {
		return st, fmt.Errorf("threepc/bank: %s: reading %s: %w", r.Name(), MetaTable, err)
	}
	defer rows.Close()
	seen := 0
	for rows.Next() {
		var name string
		var v int64
		if err := rows.Scan(&name, &v); err != nil {
			return st, fmt.Errorf("threepc/bank: %s: %w", r.Name(), err)
		}
		switch name {
		case "accounts":
			st.Accounts = v
			seen++
		case "seeded_total":
			st.Seeded = v
			seen++
		}
	}
	if err := rows.Err(); err != nil {
		return st, fmt.Errorf("threepc/bank: %s: %w", r.Name(), err)
	}
	if seen < 2 || st.Accounts <= 0 {
		return st, fmt.Errorf("%w in %q (no seed recorded): run `threepc bank setup --reset`", ErrNotSetUp, r.Name())
	}
	err = db.QueryRowContext(ctx, "SELECT COALESCE(SUM(balance), 0), COUNT(*) FROM "+AccountsTable).Scan(&st.Total, &st.Rows)
	if err != nil {
		return st, fmt.Errorf("threepc/bank: %s: summing balances: %w", r.Name(), err)
	}
	return st, nil
}

// SetUpAlready reports whether the bank tables of r hold rows.
func SetUpAlready(ctx context.Context, r resource.Resource) (bool, error) {
	exists, err := tableExists(ctx, r, MetaTable)
	if err != nil || !exists {
		return false, err
	}
	var n int64
	if err := resource.DBOf(r).QueryRowContext(ctx, "SELECT COUNT(*) FROM "+MetaTable).Scan(&n); err != nil {
		return false, fmt.Errorf("threepc/bank: %s: %w", r.Name(), err)
	}
	return n > 0, nil
}

func tableExists(ctx context.Context, r resource.Resource, table string) (bool, error) {
	var q string
	if Dialect(r) == "postgres" {
		q = "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = '" + table + "'"
	} else {
		q = "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = '" + table + "'"
	}
	var n int
	if err := resource.DBOf(r).QueryRowContext(ctx, q).Scan(&n); err != nil {
		return false, fmt.Errorf("threepc/bank: %s: looking for %s: %w", r.Name(), table, err)
	}
	return n > 0, nil
}

// Setup creates the bank tables in r and seeds accounts rows of
// InitialBalance, replacing whatever was there. Callers check
// SetUpAlready first on every database so that a refusal changes nothing.
func Setup(ctx context.Context, r resource.Resource, accounts int) error {
	if accounts <= 0 {
		return fmt.Errorf("threepc/bank: accounts must be positive, got %d", accounts)
	}
	db := resource.DBOf(r)
	ddl := []string{
		"CREATE TABLE IF NOT EXISTS " + AccountsTable + " (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)",
		"CREATE TABLE IF NOT EXISTS " + MetaTable + " (name VARCHAR(64) PRIMARY KEY, value BIGINT NOT NULL)",
		"CREATE TABLE IF NOT EXISTS " + LedgerTable + " (transfer VARCHAR(64) NOT NULL, leg SMALLINT NOT NULL, " +
			"account BIGINT NOT NULL, delta BIGINT NOT NULL, participants VARCHAR(255) NOT NULL, protocol VARCHAR(32) NOT NULL, " +
			"PRIMARY KEY (transfer, leg))",
		"CREATE TABLE IF NOT EXISTS " + OutcomeTable + " (transfer VARCHAR(64) PRIMARY KEY, outcome VARCHAR(16) NOT NULL, " +
			"participants VARCHAR(255) NOT NULL, protocol VARCHAR(32) NOT NULL, detail VARCHAR(255) NOT NULL)",
	}
	for _, q := range ddl {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("threepc/bank: %s: %w", r.Name(), err)
		}
	}
	// One local transaction, so a failed seed leaves no meta rows and
	// `check` reports "not set up" rather than a wrong total.
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("threepc/bank: %s: %w", r.Name(), err)
	}
	defer func() { _ = tx.Rollback() }()
	for _, q := range []string{"DELETE FROM " + MetaTable, "DELETE FROM " + AccountsTable, "DELETE FROM " + LedgerTable, "DELETE FROM " + OutcomeTable} {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("threepc/bank: %s: %w", r.Name(), err)
		}
	}
	const batch = 1000
	for lo := 1; lo <= accounts; lo += batch {
		var b strings.Builder
		b.WriteString("INSERT INTO " + AccountsTable + " (id, balance) VALUES ")
		for id := lo; id < lo+batch && id <= accounts; id++ {
			if id > lo {
				b.WriteByte(',')
			}
			b.WriteString("(" + strconv.Itoa(id) + "," + strconv.Itoa(InitialBalance) + ")")
		}
		if _, err := tx.ExecContext(ctx, b.String()); err != nil {
			return fmt.Errorf("threepc/bank: %s: seeding accounts: %w", r.Name(), err)
		}
	}
	meta := fmt.Sprintf("INSERT INTO %s (name, value) VALUES ('accounts', %d), ('seeded_total', %d)",
		MetaTable, accounts, int64(accounts)*InitialBalance)
	if _, err := tx.ExecContext(ctx, meta); err != nil {
		return fmt.Errorf("threepc/bank: %s: %w", r.Name(), err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("threepc/bank: %s: %w", r.Name(), err)
	}
	return nil
}

// placeholder returns the n-th (1-based) bind parameter of the dialect.
func placeholder(dialect string, n int) string {
	if dialect == "postgres" {
		return "$" + strconv.Itoa(n)
	}
	return "?"
}

// updateSQL adds $1 to account $2.
func updateSQL(dialect string) string {
	return "UPDATE " + AccountsTable + " SET balance = balance + " + placeholder(dialect, 1) +
		" WHERE id = " + placeholder(dialect, 2)
}

// ledgerSQL inserts a leg's ledger row: (transfer, leg, account, delta,
// participants, protocol) = ($1..$6).
func ledgerSQL(dialect string) string {
	var ps []string
	for i := 1; i <= 6; i++ {
		ps = append(ps, placeholder(dialect, i))
	}
	return "INSERT INTO " + LedgerTable + " (transfer, leg, account, delta, participants, protocol) VALUES (" + strings.Join(ps, ", ") + ")"
}

// pgLegSQL is a whole leg in one PostgreSQL statement, so that the ledger
// row costs no round trip: add $1 to account $2 and insert the ledger row
// ($3 transfer, $4 leg, $5 participants, $6 protocol).
const pgLegSQL = "WITH ledger AS (INSERT INTO " + LedgerTable + " (transfer, leg, account, delta, participants, protocol) " +
	"VALUES ($3, $4, $2, $1, $5, $6)) UPDATE " + AccountsTable + " SET balance = balance + $1 WHERE id = $2"
