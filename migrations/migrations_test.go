package migrations_test

import (
	"context"
	"database/sql"
	"os"
	"testing"

	_ "github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/migrations"
)

func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }

// TestUpIsIdempotentAndLeavesThePoolAlone: Up creates the marker table,
// a second Up changes nothing, the version is 2, the table takes marker,
// tombstone and evidence rows of one gtid, and the caller's pool is still
// open and has no connection held afterwards.
func TestUpIsIdempotentAndLeavesThePoolAlone(t *testing.T) {
	for _, c := range []struct {
		kind    harness.Kind
		driver  string
		dialect migrations.Dialect
	}{
		{harness.Postgres, "pgx", migrations.DialectPostgres},
		{harness.MariaDB, "mysql", migrations.DialectMySQL},
	} {
		t.Run(string(c.kind), func(t *testing.T) {
			ctx := context.Background()
			srv := harness.Shared(t, c.kind)
			db, err := sql.Open(c.driver, srv.DSN(srv.NewDatabase(t)))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if v, dirty, err := migrations.Version(ctx, db, c.dialect); err != nil || v != 0 || dirty {
				t.Fatalf("before Up: version %d dirty %v err %v", v, dirty, err)
			}
			for i := 0; i < 2; i++ {
				if err := migrations.Up(ctx, db, c.dialect); err != nil {
					t.Fatalf("Up #%d: %v", i+1, err)
				}
			}
			if v, dirty, err := migrations.Version(ctx, db, c.dialect); err != nil || v != 2 || dirty {
				t.Fatalf("after Up: version %d dirty %v err %v", v, dirty, err)
			}
			if _, err := db.ExecContext(ctx, "INSERT INTO threepc_markers (gtid, state, primary_name, participants, owner) VALUES ('01J9ZQ4M3B6Q5W2E8R7T1Y0V9P', 'precommit', 'a', 'a,b', 'test')"); err != nil {
				t.Fatalf("marker table unusable: %v", err)
			}
			if _, err := db.ExecContext(ctx, "INSERT INTO threepc_markers (gtid, state, primary_name, participants, owner) VALUES ('01J9ZQ4M3B6Q5W2E8R7T1Y0V9Q', 'maybe', 'a', 'a,b', 'test')"); err == nil {
				t.Fatal("the state CHECK constraint is missing")
			}
			if _, err := db.ExecContext(ctx, "INSERT INTO threepc_markers (gtid, branch, state, primary_name, participants, owner, space) VALUES ('01J9ZQ4M3B6Q5W2E8R7T1Y0V9P', 'b', 'evidence', 'a', '', '', '7R2AA5JA')"); err != nil {
				t.Fatalf("evidence row beside the marker row of its gtid: %v", err)
			}
			if _, err := db.ExecContext(ctx, "INSERT INTO threepc_markers (gtid, state, primary_name, participants, owner) VALUES ('01J9ZQ4M3B6Q5W2E8R7T1Y0V9P', 'abort', 'a', 'a,b', 'test')"); err == nil {
				t.Fatal("a second marker row for one gtid: the primary key no longer makes InsertMarker a compare-and-set")
			}
			if _, err := db.ExecContext(ctx, "UPDATE threepc_markers SET state = 'committed' WHERE branch = ''"); err != nil {
				t.Fatalf("tombstone refused: %v", err)
			}
			if s := db.Stats(); s.InUse != 0 {
				t.Fatalf("migrations left %d connections in use", s.InUse)
			}
			if err := db.PingContext(ctx); err != nil {
				t.Fatalf("the caller's pool was closed: %v", err)
			}
		})
	}
}

func TestUnknownDialect(t *testing.T) {
	if _, err := migrations.FS("sqlite"); err == nil {
		t.Fatal("want an error for an unknown dialect")
	}
}
