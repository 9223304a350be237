// Package harness starts throwaway PostgreSQL and MariaDB servers for
// tests: in temporary directories, on free loopback ports, as an
// unprivileged OS user when the process runs as root. Servers can be
// stopped, killed with SIGKILL and restarted on the same data directory,
// which crash tests need.
//
// Users of threepc can use it in their own tests:
//
//	func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }
//
//	func TestTransfer(t *testing.T) {
//		pg := harness.Shared(t, harness.Postgres)
//		db := pg.NewDatabase(t)
//		dsn := pg.DSN(db)
//		...
//	}
//
// THREEPC_TEST_POSTGRES and THREEPC_TEST_MYSQL (URLs, postgres://... and
// mysql://user:pass@host:port/db) make Shared use existing servers instead;
// those cannot be killed or restarted.
package harness

import (
	"errors"
)

// Kind is a database server kind.
type Kind string

// The server kinds the harness can start.
const (
	Postgres Kind = "postgres"
	MariaDB  Kind = "mariadb"
)

// Errors of the harness.
var (
	// ErrBinariesMissing: the server's binaries (initdb/postgres,
	// mariadb-install-db/mariadbd) are not installed.
	ErrBinariesMissing = errors.New("harness: database server binaries not found")
	// ErrExternal: the operation (Kill, Stop, Restart) is not possible on
	// an external server given by environment variable.
	ErrExternal = errors.New("harness: not supported on an external server")
)

// Options configure Start.
type Options struct {
	// Settings are extra server settings: for PostgreSQL `-c name=value`
	// (max_prepared_transactions defaults to 64 and can be overridden
	// here), for MariaDB `--name=value`.
	Settings map[string]string
	// Dir is the parent of the server's temporary directory; default
	// os.TempDir().
	Dir string
	// Log receives one line per server event (start, kill, restart); nil
	// discards them.
	Log func(format string, args ...any)
}

// TB is the part of testing.TB the harness uses.
type TB interface {
	Helper()
	Name() string
	Logf(format string, args ...any)
	Fatalf(format string, args ...any)
	Skipf(format string, args ...any)
	Cleanup(func())
}

// Runner is *testing.M.
type Runner interface{ Run() int }
