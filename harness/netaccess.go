package harness

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
)

// A server in a network namespace (Options.NetNS) is reached from the
// test's namespace over a veth pair, so its clients do not come from
// 127.0.0.1, the only address initdb's pg_hba.conf and MariaDB's root
// account trust. The namespace is the test's own and reachable only
// through that pair, so such servers trust every address instead.

// netHBAFile is the pg_hba.conf of a PostgreSQL server in a network
// namespace, in its server directory.
const netHBAFile = "pg_hba_netns.conf"

// writeNetHBA writes netHBAFile before a start in a network namespace;
// postgresArgs points hba_file at it.
func (s *Server) writeNetHBA() error {
	if s.kind != Postgres || s.opts.NetNS == "" {
		return nil
	}
	const hba = "# harness: a server in a test's own network namespace trusts every client\n" +
		"local all all trust\n" +
		"host all all 0.0.0.0/0 trust\n" +
		"host all all ::/0 trust\n"
	if err := os.WriteFile(filepath.Join(s.dir, netHBAFile), []byte(hba), 0o644); err != nil {
		return fmt.Errorf("harness: %w", err)
	}
	return nil
}

// allowRemoteRoot lets root log in from any address (root@'%', all
// privileges, no password) on a MariaDB server in a network namespace,
// over its Unix socket as root@localhost. It is idempotent.
func (s *Server) allowRemoteRoot(ctx context.Context) error {
	db, err := sql.Open("mysql", "root@unix("+filepath.Join(s.dir, "mysql.sock")+")/")
	if err != nil {
		return err
	}
	defer db.Close()
	for _, q := range []string{
		"CREATE USER IF NOT EXISTS 'root'@'%'",
		"GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION",
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return nil
}
