package harness

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
)

// postgresDefaults are server settings that keep a throwaway cluster small
// and fast. fsync=off is safe for the crash tests: Kill ends processes,
// not the machine, so WAL written to the page cache survives. Settings
// that would lose WAL on a process kill (synchronous_commit=off) are not
// used.
var postgresDefaults = map[string]string{
	"listen_addresses":          "127.0.0.1",
	"max_prepared_transactions": "64",
	"max_connections":           "100",
	"fsync":                     "off",
	"full_page_writes":          "off",
	"shared_buffers":            "32MB",
	"log_min_messages":          "warning",
	"log_line_prefix":           "%m [%p] ",
	// The default, posix, puts segments in /dev/shm that a killed
	// postmaster leaves behind (0.5 MB each, never freed); mmap keeps them
	// in the data directory, which Close removes.
	"dynamic_shared_memory_type": "mmap",
}

// mariadbDefaults keep InnoDB small and start-up fast. Log flushing at
// commit to the OS (flush_log_at_trx_commit=2) survives a process kill,
// which is the only crash the harness makes.
var mariadbDefaults = map[string]string{
	"innodb-buffer-pool-size":        "32M",
	"innodb-log-file-size":           "16M",
	"innodb-flush-log-at-trx-commit": "2",
	"innodb-doublewrite":             "0",
	"performance-schema":             "OFF",
	"character-set-server":           "utf8mb4",
	"collation-server":               "utf8mb4_general_ci",
	"max-connections":                "200",
	"skip-name-resolve":              "ON",
}

func (s *Server) initData(ctx context.Context) error {
	switch s.kind {
	case Postgres:
		return s.runInit(ctx, s.bin.initdb,
			"-D", s.dataDir, "-U", "postgres", "--auth=trust", "-E", "UTF8",
			"--no-locale", "--no-sync", "--no-instructions",
			// 1 MB WAL segments instead of 16 MB: a quarter less to write
			// and to copy from the template.
			"--wal-segsize=1")
	case MariaDB:
		return s.runInit(ctx, s.bin.initdb,
			"--no-defaults",
			"--datadir="+s.dataDir,
			"--auth-root-authentication-method=normal",
			"--skip-test-db",
			"--skip-name-resolve",
			"--innodb-buffer-pool-size="+mariadbDefaults["innodb-buffer-pool-size"],
			"--innodb-log-file-size="+mariadbDefaults["innodb-log-file-size"],
		)
	}
	return fmt.Errorf("harness: unknown server kind %q", s.kind)
}

func (s *Server) postgresArgs() []string {
	settings := merge(merge(postgresDefaults, map[string]string{"listen_addresses": s.host}), s.opts.Settings)
	settings["port"] = strconv.Itoa(s.port)
	settings["unix_socket_directories"] = s.dir
	if s.opts.NetNS != "" {
		settings["hba_file"] = filepath.Join(s.dir, netHBAFile)
	}
	args := []string{"-D", s.dataDir}
	for _, k := range sortedKeys(settings) {
		args = append(args, "-c", k+"="+settings[k])
	}
	return args
}

func (s *Server) mariadbArgs() []string {
	settings := merge(mariadbDefaults, s.opts.Settings)
	// --no-defaults must come first, or my.cnf files are read.
	args := []string{"--no-defaults",
		"--datadir=" + s.dataDir,
		"--port=" + strconv.Itoa(s.port),
		"--bind-address=" + s.host,
		"--socket=" + filepath.Join(s.dir, "mysql.sock"),
		"--pid-file=" + filepath.Join(s.dir, "mariadbd.pid"),
		"--tmpdir=" + s.dir,
	}
	for _, k := range sortedKeys(settings) {
		args = append(args, "--"+k+"="+settings[k])
	}
	return args
}

func merge(a, b map[string]string) map[string]string {
	m := make(map[string]string, len(a)+len(b))
	for k, v := range a {
		m[k] = v
	}
	for k, v := range b {
		m[k] = v
	}
	return m
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func (s *Server) driverName() string {
	if s.kind == Postgres {
		return "pgx"
	}
	return "mysql"
}

// DSN is the data source name for database in the native form of the Go
// driver: for PostgreSQL a pgx URL
// "postgres://postgres@127.0.0.1:PORT/DB?sslmode=disable" (append more
// parameters with "&"), for MariaDB a go-sql-driver DSN
// "root@tcp(127.0.0.1:PORT)/DB" (no parameters). An empty database means
// the server's default database (PostgreSQL "postgres", MariaDB none; for
// an external server the database of its URL).
func (s *Server) DSN(database string) string {
	if s.kind == Postgres {
		return s.URL(database)
	}
	cfg := mysql.NewConfig()
	cfg.User = s.user
	cfg.Passwd = s.password
	cfg.Net = "tcp"
	cfg.Addr = s.Addr()
	if database == "" {
		database = s.defaultDB
	}
	cfg.DBName = database
	return cfg.FormatDSN()
}

// URL is the database URL as a command line takes it:
// "postgres://postgres@127.0.0.1:PORT/DB?sslmode=disable" or
// "mysql://root@127.0.0.1:PORT/DB".
func (s *Server) URL(database string) string {
	u := url.URL{Host: s.Addr()}
	if s.password != "" {
		u.User = url.UserPassword(s.user, s.password)
	} else {
		u.User = url.User(s.user)
	}
	if s.kind == Postgres {
		if database == "" {
			database = s.defaultDB
		}
		u.Scheme = "postgres"
		u.Path = "/" + database
		u.RawQuery = s.query
		if u.RawQuery == "" {
			u.RawQuery = "sslmode=disable"
		}
		return u.String()
	}
	if database == "" {
		database = s.defaultDB
	}
	u.Scheme = "mysql"
	u.Path = "/" + database
	return u.String()
}

var dbNameRE = regexp.MustCompile(`^[A-Za-z0-9_]{1,63}$`)

// CreateDatabase creates database name unless it exists. Names are limited
// to letters, digits and underscores, at most 63 bytes.
func (s *Server) CreateDatabase(ctx context.Context, name string) error {
	if !dbNameRE.MatchString(name) {
		return fmt.Errorf("harness: invalid database name %q", name)
	}
	db, err := sql.Open(s.driverName(), s.DSN(""))
	if err != nil {
		return fmt.Errorf("harness: %w", err)
	}
	defer db.Close()
	switch s.kind {
	case Postgres:
		// PostgreSQL has no CREATE DATABASE IF NOT EXISTS; a concurrent
		// creator shows up as 42P04 duplicate_database.
		var exists bool
		if err := db.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
			return fmt.Errorf("harness: create database %s: %w", name, err)
		}
		if exists {
			return nil
		}
		_, err = db.ExecContext(ctx, `CREATE DATABASE "`+name+`"`)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42P04" {
			err = nil
		}
	case MariaDB:
		_, err = db.ExecContext(ctx, "CREATE DATABASE IF NOT EXISTS `"+name+"`")
	}
	if err != nil {
		return fmt.Errorf("harness: create database %s: %w", name, err)
	}
	return nil
}

// dropDatabase removes a database made by NewDatabase on an external
// server.
func (s *Server) dropDatabase(ctx context.Context, name string) error {
	if !dbNameRE.MatchString(name) {
		return fmt.Errorf("harness: invalid database name %q", name)
	}
	db, err := sql.Open(s.driverName(), s.DSN(""))
	if err != nil {
		return err
	}
	defer db.Close()
	q := "DROP DATABASE IF EXISTS `" + name + "`"
	if s.kind == Postgres {
		q = `DROP DATABASE IF EXISTS "` + name + `"`
	}
	_, err = db.ExecContext(ctx, q)
	return err
}
