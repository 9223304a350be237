package postgres

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/oklog/ulid/v2"

	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/migrations"
	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/resource/resourcetest"
)

func TestConformance(t *testing.T) {
	srv := harness.Shared(t, harness.Postgres)
	var (
		mu  sync.Mutex
		dsn = map[resource.Resource]string{} // database of each resource made here
	)
	open := func(t *testing.T, name, url string) resource.Resource {
		t.Helper()
		r, err := Open(name, url, Config{})
		if err != nil {
			t.Fatalf("Open(%s): %v", name, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := migrations.Up(ctx, r.DB(), migrations.DialectPostgres); err != nil {
			r.Close()
			t.Fatalf("migrations: %v", err)
		}
		mu.Lock()
		dsn[r] = url
		mu.Unlock()
		return r
	}
	dsnOf := func(t *testing.T, r resource.Resource) string {
		t.Helper()
		mu.Lock()
		defer mu.Unlock()
		u, ok := dsn[r]
		if !ok {
			t.Fatalf("resource %s was not made by the target", r.Name())
		}
		return u
	}
	resourcetest.Run(t, resourcetest.Target{
		New: func(t *testing.T, name string) resource.Resource {
			return open(t, name, srv.DSN(srv.NewDatabase(t)))
		},
		NewOnDatabaseOf: func(t *testing.T, r resource.Resource, name string) resource.Resource {
			return open(t, name, dsnOf(t, r))
		},
		Kill: func(t *testing.T) {
			if err := srv.Kill(); errors.Is(err, harness.ErrExternal) {
				t.Skipf("cannot kill an external server: %v", err)
			} else if err != nil {
				t.Fatalf("kill: %v", err)
			}
		},
		Restart: func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if err := srv.Restart(ctx); err != nil {
				t.Fatalf("restart: %v", err)
			}
		},
		RollbackOutside: func(t *testing.T, r resource.Resource, xid resource.XID) {
			t.Helper()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			c, err := pgx.Connect(ctx, dsnOf(t, r))
			if err != nil {
				t.Fatalf("outside connection: %v", err)
			}
			defer c.Close(ctx)
			if _, err := c.Exec(ctx, "ROLLBACK PREPARED '"+xid.PostgresGID()+"'"); err != nil {
				t.Fatalf("outside ROLLBACK PREPARED %s: %v", xid, err)
			}
		},
		PrepareForeign: func(t *testing.T, r resource.Resource) func() {
			t.Helper()
			url := dsnOf(t, r)
			gid := "foreign-" + ulid.Make().String()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			c, err := pgx.Connect(ctx, url)
			if err != nil {
				t.Fatalf("foreign connection: %v", err)
			}
			defer c.Close(ctx)
			for _, q := range []string{"BEGIN", "CREATE TABLE " + "foreign_" + ulid.Make().String() + " (x int)", "PREPARE TRANSACTION '" + gid + "'"} {
				if _, err := c.Exec(ctx, q); err != nil {
					t.Fatalf("foreign transaction: %s: %v", q, err)
				}
			}
			return func() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				c, err := pgx.Connect(ctx, url)
				if err != nil {
					t.Errorf("finish foreign transaction: %v", err)
					return
				}
				defer c.Close(ctx)
				if _, err := c.Exec(ctx, "ROLLBACK PREPARED '"+gid+"'"); err != nil {
					t.Errorf("finish foreign transaction %s: %v", gid, err)
				}
			}
		},
	})
}
