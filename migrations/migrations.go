// Package migrations creates and upgrades threepc's marker table with
// golang-migrate, from SQL files embedded in the binary.
//
// The migrations keep their own version table (SchemaTable), so they never
// collide with the application's own golang-migrate history in the same
// database. Up is idempotent and safe to call at every start-up.
package migrations

import (
	"bytes"
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"

	"github.com/golang-migrate/migrate/v4"
	"github.com/golang-migrate/migrate/v4/database"
	"github.com/golang-migrate/migrate/v4/database/multistmt"
	mysqlmigrate "github.com/golang-migrate/migrate/v4/database/mysql"
	pgxmigrate "github.com/golang-migrate/migrate/v4/database/pgx/v5"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// SchemaTable is the golang-migrate version table of threepc's migrations.
const SchemaTable = "threepc_schema_migrations"

// Dialect selects the SQL flavour of the migrations.
type Dialect string

// The supported dialects. MariaDB uses DialectMySQL.
const (
	DialectPostgres Dialect = "postgres"
	DialectMySQL    Dialect = "mysql"
)

//go:embed postgres/*.sql mysql/*.sql
var files embed.FS

// FS returns the migration files of a dialect, for use with other
// migration tools.
func FS(d Dialect) (fs.FS, error) {
	switch d {
	case DialectPostgres, DialectMySQL:
		return fs.Sub(files, string(d))
	}
	return nil, fmt.Errorf("threepc/migrations: unknown dialect %q", d)
}

// Up applies every pending migration of dialect d to db. db is used, not
// closed. The context bounds the whole run: golang-migrate takes no
// context, so a cancelled run is stopped between statements through
// migrate's GracefulStop.
func Up(ctx context.Context, db *sql.DB, d Dialect) error {
	m, closeFn, err := newMigrate(ctx, db, d)
	if err != nil {
		return err
	}
	defer closeFn()
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			select {
			case m.GracefulStop <- true:
			default:
			}
		case <-done:
		}
	}()
	if err := m.Up(); err != nil && !errors.Is(err, migrate.ErrNoChange) {
		return fmt.Errorf("threepc/migrations: %s up: %w", d, err)
	}
	return ctx.Err()
}

// Version reports the applied migration version of dialect d in db: 0 with
// no error when none is applied, and dirty when a migration failed midway.
func Version(ctx context.Context, db *sql.DB, d Dialect) (version uint, dirty bool, err error) {
	m, closeFn, err := newMigrate(ctx, db, d)
	if err != nil {
		return 0, false, err
	}
	defer closeFn()
	version, dirty, err = m.Version()
	if errors.Is(err, migrate.ErrNilVersion) {
		return 0, false, nil
	}
	return version, dirty, err
}

// newMigrate builds a migrate instance on db without taking db over:
// golang-migrate's drivers close the *sql.DB they are given. PostgreSQL
// gets a private pool opened from the same pgx connection config; MySQL
// gets one pinned connection of db, released by the returned function.
func newMigrate(ctx context.Context, db *sql.DB, d Dialect) (*migrate.Migrate, func(), error) {
	sub, err := FS(d)
	if err != nil {
		return nil, nil, err
	}
	src, err := iofs.New(sub, ".")
	if err != nil {
		return nil, nil, fmt.Errorf("threepc/migrations: %w", err)
	}
	var (
		drv     database.Driver
		closeFn func()
	)
	switch d {
	case DialectPostgres:
		var cfg *pgx.ConnConfig
		conn, err := db.Conn(ctx)
		if err != nil {
			return nil, nil, fmt.Errorf("threepc/migrations: %w", err)
		}
		err = conn.Raw(func(dc any) error {
			c, ok := dc.(*stdlib.Conn)
			if !ok {
				return fmt.Errorf("threepc/migrations: postgres: want a pgx stdlib *sql.DB, got %T", dc)
			}
			cfg = c.Conn().Config().Copy()
			return nil
		})
		conn.Close()
		if err != nil {
			return nil, nil, err
		}
		private := stdlib.OpenDB(*cfg)
		private.SetMaxOpenConns(2)
		drv, err = pgxmigrate.WithInstance(private, &pgxmigrate.Config{MigrationsTable: SchemaTable})
		if err != nil {
			private.Close()
			return nil, nil, fmt.Errorf("threepc/migrations: postgres: %w", err)
		}
		closeFn = func() { drv.Close() } // closes private, never db
	case DialectMySQL:
		conn, err := db.Conn(ctx)
		if err != nil {
			return nil, nil, fmt.Errorf("threepc/migrations: %w", err)
		}
		drv, err = mysqlmigrate.WithConnection(ctx, conn, &mysqlmigrate.Config{MigrationsTable: SchemaTable})
		if err != nil {
			conn.Close()
			return nil, nil, fmt.Errorf("threepc/migrations: mysql: %w", err)
		}
		closeFn = func() { drv.Close() } // closes conn only: db is nil in a WithConnection driver
		drv = oneStatementPerExec{drv}
	}
	m, err := migrate.NewWithInstance("iofs", src, string(d), drv)
	if err != nil {
		closeFn()
		return nil, nil, fmt.Errorf("threepc/migrations: %w", err)
	}
	return m, closeFn, nil
}

// oneStatementPerExec runs a MySQL migration file statement by statement.
// golang-migrate's mysql driver sends a whole file in one Exec, which
// fails unless the caller's pool happens to have multiStatements on; a
// migration that must delete rows before it alters the table needs two.
// MySQL commits each DDL statement on its own anyway, so nothing atomic
// is lost. Statements end with a semicolon at the end of a line.
type oneStatementPerExec struct{ database.Driver }

// maxMigrationSize bounds one migration file; ours are a few hundred bytes.
const maxMigrationSize = 1 << 20

func (d oneStatementPerExec) Run(migration io.Reader) error {
	var runErr error
	err := multistmt.Parse(migration, []byte(";\n"), maxMigrationSize, func(stmt []byte) bool {
		if len(bytes.TrimSpace(stmt)) == 0 {
			return true
		}
		runErr = d.Driver.Run(bytes.NewReader(stmt))
		return runErr == nil
	})
	if runErr != nil {
		return runErr
	}
	return err
}
