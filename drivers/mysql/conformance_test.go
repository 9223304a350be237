package mysql

import (
	"context"
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
	t.Run("Default", func(t *testing.T) { runConformance(t, Config{}) })
	t.Run("KeepAttached", func(t *testing.T) { runConformance(t, Config{KeepAttached: true}) })
	// The fastest setting: branches begin with XA START alone on a
	// reused connection (the session id is cached).
	t.Run("KeepAttachedNoReadOnlyVote", func(t *testing.T) {
		runConformance(t, Config{KeepAttached: true, DisableReadOnlyVote: true})
	})
	// Detached without the vote: a read-only branch is prepared and
	// detached, and MariaDB answers its by-id finish with 1402.
	t.Run("NoReadOnlyVote", func(t *testing.T) {
		runConformance(t, Config{DisableReadOnlyVote: true})
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
			if err := migrations.Up(ctx, r.DB(), migrations.DialectMySQL); err != nil {
				t.Fatal(err)
			}
			return r
		},
		NewOnDatabaseOf: func(t *testing.T, r resource.Resource, name string) resource.Resource {
			var database string
			if err := r.DB().QueryRowContext(t.Context(), "SELECT DATABASE()").Scan(&database); err != nil {
				t.Fatal(err)
			}
			return open(t, name, database)
		},
		Kill: func(t *testing.T) {
			if err := srv.Kill(); err != nil {
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
		PrepareForeign: prepareForeign,
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
	conn, err := r.DB().Conn(ctx)
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
			_, err := r.DB().ExecContext(ctx, "XA ROLLBACK "+xid)
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
