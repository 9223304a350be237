package txmanager_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	mysqldriver "github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/threepc/threepc/drivers/mysql"
	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

// TestAbortErrorNamesBranch: the function's error comes back from Run as
// an AbortError naming the branch whose statement produced it, while the
// caller's own errors and the database's stay matchable.
func TestAbortErrorNamesBranch(t *testing.T) {
	pg, maria := pair(t, 2)
	m := newManager(t, []resource.Resource{pg, maria})
	ctx := context.Background()
	errMine := errors.New("my own error")

	run := func(t *testing.T, fn func(ctx context.Context, tx *txmanager.Tx) error) *txmanager.AbortError {
		t.Helper()
		err := m.Run(ctx, fn)
		var ae *txmanager.AbortError
		if !errors.As(err, &ae) || !errors.Is(err, txmanager.ErrAborted) {
			t.Fatalf("Run = %v, want an AbortError", err)
		}
		t.Logf("Run: %v", err)
		return ae
	}
	want := func(t *testing.T, ae *txmanager.AbortError, res string, phase resource.Phase, msg ...string) {
		t.Helper()
		if ae.Resource != res || ae.Phase != phase {
			t.Errorf("AbortError{Resource: %q, Phase: %q}, want %q, %q: %v", ae.Resource, ae.Phase, res, phase, ae)
		}
		for _, s := range msg {
			if !strings.Contains(ae.Error(), s) {
				t.Errorf("%q lacks %q", ae, s)
			}
		}
	}

	t.Run("exec on maria", func(t *testing.T) {
		ae := run(t, func(ctx context.Context, tx *txmanager.Tx) error {
			if _, err := tx.DB("pg").ExecContext(ctx, "UPDATE accounts SET balance = balance - 1 WHERE id = 1"); err != nil {
				return err
			}
			if _, err := tx.DB("maria").ExecContext(ctx, "UPDATE no_such_table SET x = 1"); err != nil {
				return fmt.Errorf("crediting: %w", err)
			}
			return nil
		})
		want(t, ae, "maria", resource.PhaseWork, `aborted in work by "maria": crediting: Error 1146`)
		var me *mysqldriver.MySQLError
		if !errors.As(ae, &me) || me.Number != 1146 {
			t.Errorf("the MySQL error is lost: %v", ae)
		}
	})
	t.Run("query row on pg, after a handled error on maria", func(t *testing.T) {
		ae := run(t, func(ctx context.Context, tx *txmanager.Tx) error {
			// A duplicate key the function handles does not make maria the
			// culprit of what comes later.
			if _, err := tx.DB("maria").ExecContext(ctx, "INSERT INTO accounts (id, balance) VALUES (1, 0)"); err == nil {
				return errors.New("want a duplicate key")
			}
			var n int64
			return tx.DB("pg").QueryRowContext(ctx, "SELECT balance FROM no_such_table").Scan(&n)
		})
		want(t, ae, "pg", resource.PhaseWork, `aborted in work by "pg": `, "42P01")
		var pgErr *pgconn.PgError
		if !errors.As(ae, &pgErr) || pgErr.Code != "42P01" {
			t.Errorf("the PostgreSQL error is lost: %v", ae)
		}
	})
	t.Run("the caller's own error", func(t *testing.T) {
		ae := run(t, func(ctx context.Context, tx *txmanager.Tx) error {
			if _, err := tx.DB("pg").ExecContext(ctx, "SELECT * FROM no_such_table"); err == nil {
				return errors.New("want an error")
			}
			return fmt.Errorf("business rule: %w", errMine)
		})
		want(t, ae, "", resource.PhaseWork, "aborted in work: business rule: my own error")
		if !errors.Is(ae, errMine) {
			t.Errorf("errors.Is(err, errMine) fails: %v", ae)
		}
	})
	t.Run("unknown resource", func(t *testing.T) {
		ae := run(t, func(ctx context.Context, tx *txmanager.Tx) error {
			_, err := tx.DB("nope").ExecContext(ctx, "SELECT 1")
			return err
		})
		want(t, ae, "", resource.PhaseWork, `unknown resource "nope"`)
		if !errors.Is(ae, txmanager.ErrUnknownResource) {
			t.Errorf("errors.Is(err, ErrUnknownResource) fails: %v", ae)
		}
	})
	// Nothing of the aborted transactions stayed.
	if got := total(t, pg, maria); got != 4000 {
		t.Errorf("total %d, want 4000", got)
	}
}

// TestAbortErrorBranchNotBegun: a branch whose begin the server refuses
// (here: an unknown database) is named with phase begin, and the refusal
// is ErrConnectionRejected, not ErrUnreachable.
func TestAbortErrorBranchNotBegun(t *testing.T) {
	srv := harness.Shared(t, harness.MariaDB)
	bad, err := mysql.Open("bad", srv.DSN("no_such_database_here"), mysql.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	m := newManager(t, []resource.Resource{bad})
	err = m.Run(context.Background(), func(ctx context.Context, tx *txmanager.Tx) error {
		_, err := tx.DB("bad").ExecContext(ctx, "SELECT 1")
		return err
	})
	t.Logf("Run: %v", err)
	var ae *txmanager.AbortError
	if !errors.As(err, &ae) || ae.Resource != "bad" || ae.Phase != resource.PhaseBegin {
		t.Fatalf("Run = %#v, want an AbortError by \"bad\" in begin", err)
	}
	if !errors.Is(err, resource.ErrConnectionRejected) || errors.Is(err, resource.ErrUnreachable) {
		t.Errorf("Run = %v, want ErrConnectionRejected, not ErrUnreachable", err)
	}
	if s := err.Error(); !strings.Contains(s, `aborted in begin by "bad": threepc/mysql:`) || !strings.Contains(s, "Unknown database") || strings.Count(s, `"bad"`) != 1 {
		t.Errorf("message %q", s)
	}
}
