package ormtest_test

import (
	"context"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/threepc/threepc/resource"
)

// pgxDBTX is the DBTX that sqlc generates in its pgx/v5 mode.
type pgxDBTX interface {
	Exec(context.Context, string, ...interface{}) (pgconn.CommandTag, error)
	Query(context.Context, string, ...interface{}) (pgx.Rows, error)
	QueryRow(context.Context, string, ...interface{}) pgx.Row
}

var _ pgxDBTX = (*pgx.Conn)(nil)

// TestPgxRaw shows the route a pgx-native branch handle would take, on a
// pinned connection of the same kind a PostgreSQL branch runs on (a
// *sql.Conn of the resource's pgx stdlib pool): (*sql.Conn).Raw reaches
// the *pgx.Conn under database/sql, and statements sent through it are in
// the transaction that database/sql began, on the same session. Branch
// handles do not offer Raw today (README, "Works with"), so this runs
// outside a distributed transaction.
func TestPgxRaw(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t)
	conn, err := resource.DBOf(e.pg).Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(ctx, "INSERT INTO accounts (owner, balance) VALUES ($1, $2)", "alice", 100); err != nil {
		t.Fatal(err)
	}
	// The *pgx.Conn, and rows read from it, are valid only inside the
	// callback, which holds the connection.
	err = conn.Raw(func(dc any) error {
		c := dc.(*stdlib.Conn).Conn()
		if s := c.PgConn().TxStatus(); s != 'T' {
			t.Errorf("pgx sees transaction status %q, want 'T' (in a transaction)", s)
		}
		var db pgxDBTX = c
		tag, err := db.Exec(ctx, "UPDATE accounts SET balance = balance + $1 WHERE owner = $2", 25, "alice")
		if err != nil {
			return err
		}
		if !tag.Update() || tag.RowsAffected() != 1 {
			t.Errorf("command tag %q, want UPDATE 1", tag)
		}
		rows, err := db.Query(ctx, "SELECT owner, balance FROM accounts ORDER BY id")
		if err != nil {
			return err
		}
		got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[account])
		if err != nil {
			return err
		}
		if want := []account{{"alice", 125}}; !slices.Equal(got, want) {
			t.Errorf("pgx read %+v, want %+v", got, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var b int64
	if err := conn.QueryRowContext(ctx, "SELECT balance FROM accounts WHERE owner = 'alice'").Scan(&b); err != nil || b != 125 {
		t.Fatalf("database/sql after pgx: balance %d, %v; want 125", b, err)
	}
	if _, err := conn.ExecContext(ctx, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	if got := accounts(t, e.pg); len(got) != 0 {
		t.Fatalf("after ROLLBACK: %+v, want nothing: pgx's statements were not in the transaction", got)
	}
}
