package migrations

import (
	"context"
	"database/sql"
	"testing"

	"github.com/threepc/threepc/harness"
)

// TestDownFromEvidence: migration 2 can be reverted with evidence rows and
// tombstones present (they are dropped, the markers stay), also on a MySQL
// pool without multiStatements, and applied again.
func TestDownFromEvidence(t *testing.T) {
	for _, c := range []struct {
		kind    harness.Kind
		driver  string
		dialect Dialect
	}{
		{harness.Postgres, "pgx", DialectPostgres},
		{harness.MariaDB, "mysql", DialectMySQL},
	} {
		t.Run(string(c.kind), func(t *testing.T) {
			ctx := context.Background()
			srv := harness.Shared(t, c.kind)
			db, err := sql.Open(c.driver, srv.DSN(srv.NewDatabase(t)))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if err := Up(ctx, db, c.dialect); err != nil {
				t.Fatal(err)
			}
			for _, q := range []string{
				"INSERT INTO threepc_markers (gtid, state, primary_name, participants, owner) VALUES ('01J9ZQ4M3B6Q5W2E8R7T1Y0V9P', 'precommit', 'a', 'a,b', 'test')",
				"INSERT INTO threepc_markers (gtid, branch, state, primary_name, participants, owner) VALUES ('01J9ZQ4M3B6Q5W2E8R7T1Y0V9P', 'a', 'evidence', 'a', '', '')",
				"INSERT INTO threepc_markers (gtid, state, primary_name, participants, owner) VALUES ('01J9ZQ4M3B6Q5W2E8R7T1Y0V9Q', 'committed', 'a', 'a,b', 'test')",
			} {
				if _, err := db.ExecContext(ctx, q); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			m, closeFn, err := newMigrate(ctx, db, c.dialect)
			if err != nil {
				t.Fatal(err)
			}
			err = m.Steps(-1)
			closeFn()
			if err != nil {
				t.Fatalf("down: %v", err)
			}
			if v, dirty, err := Version(ctx, db, c.dialect); err != nil || v != 1 || dirty {
				t.Fatalf("after down: version %d dirty %v err %v", v, dirty, err)
			}
			var n int
			if err := db.QueryRowContext(ctx, "SELECT count(*) FROM threepc_markers WHERE gtid = '01J9ZQ4M3B6Q5W2E8R7T1Y0V9P' AND state = 'precommit'").Scan(&n); err != nil || n != 1 {
				t.Fatalf("after down: %d marker rows, err %v; want the precommit row kept", n, err)
			}
			if err := db.QueryRowContext(ctx, "SELECT count(*) FROM threepc_markers").Scan(&n); err != nil || n != 1 {
				t.Fatalf("after down: %d rows, err %v; want only the marker row", n, err)
			}
			if err := Up(ctx, db, c.dialect); err != nil {
				t.Fatalf("up again: %v", err)
			}
			if v, dirty, err := Version(ctx, db, c.dialect); err != nil || v != 2 || dirty {
				t.Fatalf("after up again: version %d dirty %v err %v", v, dirty, err)
			}
		})
	}
}
