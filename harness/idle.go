package harness

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"
)

// WaitIdle waits until no client session other than its own is connected
// to database. A process killed with SIGKILL leaves its sessions running
// on the server until the server notices: a statement already sent (a
// PREPARE TRANSACTION, a COMMIT PREPARED, an XA PREPARE) still completes,
// and on MariaDB a prepared XA stays attached to its dead session until
// then. Crash tests call WaitIdle between the kill and the checks, so that
// they see the state the dead process really left.
func (s *Server) WaitIdle(ctx context.Context, database string) error {
	db, err := sql.Open(s.driverName(), s.DSN(""))
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(1) // one session, so that "not ours" is exact
	q := "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
	if s.kind == MariaDB {
		q = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> CONNECTION_ID()"
	}
	for {
		var n int
		if err := db.QueryRowContext(ctx, q, database).Scan(&n); err != nil {
			return fmt.Errorf("harness: sessions on %s: %w", database, err)
		}
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("harness: %d sessions still on %s (%s): %w", n, database, s.sessions(db, database), ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// sessions describes the other sessions on database, for error messages.
func (s *Server) sessions(db *sql.DB, database string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	q := "SELECT concat_ws(' ', pid, state, wait_event_type, wait_event, left(query, 120)) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
	if s.kind == MariaDB {
		q = "SELECT concat_ws(' ', ID, COMMAND, TIME, STATE, left(INFO, 120)) FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> CONNECTION_ID()"
	}
	rows, err := db.QueryContext(ctx, q, database)
	if err != nil {
		return err.Error()
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var line sql.NullString
		if rows.Scan(&line) == nil {
			out = append(out, line.String)
		}
	}
	return strings.Join(out, "; ")
}
