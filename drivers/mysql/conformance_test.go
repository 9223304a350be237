package mysql

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/migrations"
	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/resource/resourcetest"
)

func TestConformance(t *testing.T) {
	// The default, and the fastest setting: branches begin with XA START
	// alone on a reused connection (the session id is cached), and a
	// read-only branch is prepared like any other.
	t.Run("Default", func(t *testing.T) { runConformance(t, Config{}) })
	// The opt-in: a branch that wrote nothing votes read-only and is
	// committed at the vote.
	t.Run("ReadOnlyVote", func(t *testing.T) {
		runConformance(t, Config{ReadOnlyVote: true})
	})
}

func runConformance(t *testing.T, cfg Config) {
	srv := harness.Shared(t, harness.MariaDB)
	open := func(t *testing.T, name, database string) resource.Resource {
		t.Helper()
		r, err := Open(name, srv.DSN(database), cfg)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	resourcetest.Run(t, resourcetest.Target{
		New: func(t *testing.T, name string) resource.Resource {
			r := open(t, name, srv.NewDatabase(t))
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := migrations.Up(ctx, resource.DBOf(r), migrations.DialectMySQL); err != nil {
				t.Fatal(err)
			}
			return r
		},
		NewOnDatabaseOf: func(t *testing.T, r resource.Resource, name string) resource.Resource {
			var database string
			if err := resource.DBOf(r).QueryRowContext(t.Context(), "SELECT DATABASE()").Scan(&database); err != nil {
				t.Fatal(err)
			}
			return open(t, name, database)
		},
		Kill: func(t *testing.T) {
			if err := srv.Kill(); errors.Is(err, harness.ErrExternal) {
				t.Skipf("cannot kill an external server (%s): %v", harness.EnvMySQL, err)
			} else if err != nil {
				t.Fatal(err)
			}
		},
		Restart: func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if err := srv.Restart(ctx); err != nil {
				t.Fatal(err)
			}
		},
		PrepareForeign:  prepareForeign,
		RollbackOutside: rollbackOutside,
	})
}

// prepareForeign prepares an XA with a formatID and gtrid threepc does not
// use, on a pinned connection it then discards, so the XA is left detached
// and prepared on the server as another program's would be.
func prepareForeign(t *testing.T, r resource.Resource) func() {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	xid := fmt.Sprintf("'foreign%d','other',1", rand.Uint32())
	conn, err := resource.DBOf(r).Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// It writes, as a real one would: MariaDB does not keep a detached
	// XA that wrote nothing (XA ROLLBACK then answers 1402).
	for _, s := range []string{
		"CREATE TABLE IF NOT EXISTS rt_foreign (id INT)",
		"XA START " + xid, "INSERT INTO rt_foreign VALUES (1)", "XA END " + xid, "XA PREPARE " + xid,
	} {
		if _, err := conn.ExecContext(ctx, s); err != nil {
			discard(conn)
			t.Fatalf("%s: %v", s, err)
		}
	}
	discard(conn)
	return func() {
		// The server detaches the XA from the closed session shortly
		// after the close; until then it answers 1397.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for {
			_, err := resource.DBOf(r).ExecContext(ctx, "XA ROLLBACK "+xid)
			if err == nil {
				return
			}
			if mysqlErrno(err) != erXAERNota || ctx.Err() != nil {
				t.Errorf("XA ROLLBACK %s: %v", xid, err)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// rollbackOutside rolls back a prepared branch behind the driver's back,
// as an operator would: KILL the session that holds it, wait (raw SQL,
// not the driver's hand-over code) until InnoDB has taken it over, then
// XA ROLLBACK by id. The wait reads INNODB_TRX only after leaving it
// unread for 300 ms, so that the server refills its cache.
func rollbackOutside(t *testing.T, r resource.Resource, xid resource.XID) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db := resource.DBOf(r)
	var database string
	if err := db.QueryRowContext(ctx, "SELECT DATABASE()").Scan(&database); err != nil {
		t.Fatal(err)
	}
	gtrid, bqual, formatID := xid.MySQL(resource.DatabaseTag(database))
	lit := fmt.Sprintf("X'%x',X'%x',%d", gtrid, bqual, formatID)
	if xid.Session != 0 {
		if _, err := db.ExecContext(ctx, fmt.Sprintf("KILL CONNECTION %d", xid.Session)); err != nil && mysqlErrno(err) != erUnknownThread {
			t.Fatal(err)
		}
		for {
			var n int
			time.Sleep(300 * time.Millisecond)
			q := fmt.Sprintf("SELECT (SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %d) + (SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_mysql_thread_id = %d)", xid.Session, xid.Session)
			if err := db.QueryRowContext(ctx, q).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				break
			}
		}
	}
	if _, err := db.ExecContext(ctx, "XA ROLLBACK "+lit); err != nil {
		t.Fatalf("XA ROLLBACK %s: %v", lit, err)
	}
}
