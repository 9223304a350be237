// Package harness starts throwaway PostgreSQL and MariaDB servers for
// tests: in temporary directories, on free loopback ports, as an
// unprivileged OS user when the process runs as root. Servers can be
// stopped, killed with SIGKILL and restarted on the same data directory,
// which crash tests need.
//
// Ports are picked at random in 20000-29999, below the kernel's ephemeral
// range, where no outgoing connection can take them, and reserved with a
// lock file in the temporary directory (threepc-ports) against other test
// binaries for the server's life, across Kill and Restart. A start whose
// port turns out taken is retried on another; a start or restart succeeds
// only once the server answering on the port reports our data directory.
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
// Tests that kill, restart or reconfigure their server take one of their
// own instead:
//
//	srv := harness.Own(t, harness.MariaDB, harness.Options{})
//
// THREEPC_TEST_POSTGRES and THREEPC_TEST_MYSQL (URLs, postgres://... and
// mysql://user:pass@host:port/db) make Shared use existing servers instead,
// so that the suite runs against a server the harness cannot start (a
// MySQL 8 server: kind MariaDB is the MySQL family). Those cannot be
// killed or restarted: Own skips its test, saying so, for a kind given by
// environment variable, and Kill and Restart return ErrExternal. Only
// loopback hosts are accepted.
//
// Servers started here trust every local connection: PostgreSQL's
// superuser "postgres" and MariaDB's "root" (as root@127.0.0.1, which has
// all privileges WITH GRANT OPTION) need no password. PostgreSQL runs with
// max_prepared_transactions=64 and fsync=off; MariaDB with
// innodb_flush_log_at_trx_commit=2 and utf8mb4. Both keep committed and
// prepared transactions across Kill and Restart, since Kill ends processes
// and not the machine. When the test binary runs as root the servers run
// as the postgres or mysql OS user (or nobody).
//
// Options.NetNS and Options.Host start a server inside an existing
// network namespace, listening on one of its addresses; everything else
// (port range, identity check, Kill, Restart) works as on loopback.
//
// Server directories live in /dev/shm when it is a tmpfs with room (else
// the temporary directory). The first Start of a kind keeps a copy of the
// freshly initialised data directory there
// (threepc-cache-<kind>-<hash>); later Starts, in any test binary, copy
// it instead of running initdb or mariadb-install-db.
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
	// /dev/shm when it is a tmpfs with room, else os.TempDir(). When the
	// test runs as root, the server's OS user must be able to reach it
	// (t.TempDir() is made reachable automatically).
	Dir string
	// Log receives one line per server event (start, kill, restart); nil
	// discards them.
	Log func(format string, args ...any)
	// NetNS, when set, is the network namespace the server runs in: a
	// path (/var/run/netns/NAME, as `ip netns add NAME` makes it) or a
	// bare NAME looked up there. Entering one needs root. Partition tests
	// use it to cut a server off by the kernel's routing instead of a
	// proxy. Such a server lets the admin user in from every address
	// (its clients come over the namespace's link, not from 127.0.0.1).
	NetNS string
	// Host is the IP address the server listens on and clients connect
	// to; default 127.0.0.1. An address that is not a loopback one is
	// accepted only with NetNS (an address of that namespace, reached
	// over a veth pair, say): tests must never reach another machine.
	Host string
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
