package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/threepc/threepc/resource"
)

// System is the database system name, as the OpenTelemetry semantic
// conventions spell it.
const System = "postgresql"

// Config configures a Resource. The zero value is ready to use.
type Config struct {
	// MaxOpenConns limits the pool that Open creates (database/sql's
	// SetMaxOpenConns); 0 leaves it unlimited. Every live branch pins one
	// connection, so the server's max_connections and
	// max_prepared_transactions bound useful values. Ignored by New, whose
	// caller owns the pool.
	MaxOpenConns int
}

// Resource is a PostgreSQL database taking part in distributed
// transactions. It implements resource.Resource and is safe for concurrent
// use.
type Resource struct {
	name   string
	db     *sql.DB
	own    bool   // Close closes db
	addr   string // host:port for messages, when known
	dbname string // database name, when known
	cfg    Config

	closeOnce sync.Once
	closeErr  error
}

var _ resource.Resource = (*Resource)(nil)

// New returns a resource named name on db, which must be a pool of pgx's
// database/sql adapter (sql.Open("pgx", ...), stdlib.OpenDB or
// stdlib.OpenDBFromPool). The name is validated before anything else.
// Close does not close db.
func New(name string, db *sql.DB, cfg Config) (*Resource, error) {
	if err := resource.ValidateName(name); err != nil {
		return nil, err // names the problem in full: no driver prefix
	}
	if db == nil {
		return nil, errors.New("threepc/postgres: nil *sql.DB")
	}
	if _, ok := db.Driver().(*stdlib.Driver); !ok {
		return nil, fmt.Errorf("threepc/postgres: want a pool of pgx's database/sql driver (github.com/jackc/pgx/v5/stdlib), got driver %T", db.Driver())
	}
	return &Resource{name: name, db: db, cfg: cfg}, nil
}

// Open returns a resource named name on a pool of its own, which Close
// closes. dsn is anything pgx.ParseConfig accepts: a postgres:// URL or
// the keyword=value form. No connection is made until the resource is used;
// call Check to verify the setup.
func Open(name, dsn string, cfg Config) (*Resource, error) {
	if err := resource.ValidateName(name); err != nil {
		return nil, err // names the problem in full: no driver prefix
	}
	pc, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("threepc/postgres: %w", err)
	}
	db := stdlib.OpenDB(*pc)
	if cfg.MaxOpenConns > 0 {
		db.SetMaxOpenConns(cfg.MaxOpenConns)
	}
	return &Resource{
		name:   name,
		db:     db,
		own:    true,
		addr:   net.JoinHostPort(pc.Host, strconv.Itoa(int(pc.Port))),
		dbname: pc.Database,
		cfg:    cfg,
	}, nil
}

// ServerAddress is the server's host:port when the resource was made by
// Open, "" otherwise (tracing.ServerAddresser).
func (r *Resource) ServerAddress() string { return r.addr }

// DatabaseName is the database's name when the resource was made by Open,
// "" otherwise (tracing.DatabaseNamer).
func (r *Resource) DatabaseName() string { return r.dbname }

// Name is the resource's name.
func (r *Resource) Name() string { return r.name }

// System returns "postgresql".
func (r *Resource) System() string { return System }

// DB is the resource's connection pool.
func (r *Resource) DB() *sql.DB { return r.db }

// Close closes the pool if Open created it. Close is idempotent.
func (r *Resource) Close() error {
	r.closeOnce.Do(func() {
		if r.own {
			r.closeErr = r.db.Close()
		}
	})
	return r.closeErr
}

func (r *Resource) where() string {
	if r.addr == "" {
		return fmt.Sprintf("resource %q", r.name)
	}
	return fmt.Sprintf("resource %q at %s", r.name, r.addr)
}

// Check verifies that the server is reachable, that prepared transactions
// are enabled (max_prepared_transactions > 0) and that the marker table
// exists.
func (r *Resource) Check(ctx context.Context) error {
	if err := r.db.PingContext(ctx); err != nil {
		if rejected(err) {
			return mapError(opOther, r.where(), err)
		}
		return fmt.Errorf("threepc/postgres: %s: cannot reach the server: %w: %w", r.where(), resource.ErrUnreachable, err)
	}
	var mpt string
	if err := r.db.QueryRowContext(ctx, "SHOW max_prepared_transactions").Scan(&mpt); err != nil {
		return mapError(opOther, r.where()+": reading max_prepared_transactions", err)
	}
	if n, err := strconv.Atoi(strings.TrimSpace(mpt)); err != nil || n <= 0 {
		return fmt.Errorf("threepc/postgres: %s: %w: max_prepared_transactions is %s; set max_prepared_transactions to at least the number of concurrent transactions in postgresql.conf and restart the server",
			r.where(), resource.ErrPreparedTransactionsDisabled, mpt)
	}
	var present, evidence bool
	q := "SELECT to_regclass('" + resource.MarkerTable + "') IS NOT NULL, EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('" +
		resource.MarkerTable + "') AND attname IN ('branch', 'space') AND NOT attisdropped HAVING count(*) = 2)"
	if err := r.db.QueryRowContext(ctx, q).Scan(&present, &evidence); err != nil {
		return mapError(opOther, r.where()+": looking for the marker table", err)
	}
	if !present {
		return fmt.Errorf("threepc/postgres: %s: %w: table %s not found in the search path; run the migrations (`threepc migrate` or migrations.Up)",
			r.where(), resource.ErrMarkerTableMissing, resource.MarkerTable)
	}
	if !evidence {
		return fmt.Errorf("threepc/postgres: %s: %w: table %s has no branch and space columns (migration 2, evidence rows and namespaces, is not applied); run the migrations (`threepc migrate` or migrations.Up)",
			r.where(), resource.ErrMarkerTableMissing, resource.MarkerTable)
	}
	return nil
}

// checkXID validates xid and that it names a branch of this resource: a
// gid of another resource would finish another resource's branch.
func (r *Resource) checkXID(xid resource.XID) error {
	if err := xid.Validate(); err != nil {
		return fmt.Errorf("threepc/postgres: %w", err)
	}
	if xid.Branch != r.name {
		return fmt.Errorf("threepc/postgres: %w: branch %q belongs to resource %q, not %q", resource.ErrInvalidID, xid, xid.Branch, r.name)
	}
	return nil
}

// quoteLiteral quotes s as an SQL string literal. Gids cannot be bind
// parameters of PREPARE TRANSACTION or COMMIT PREPARED; XID.Validate
// already restricts their characters, the quoting is a second guard.
// standard_conforming_strings is on since PostgreSQL 9.1, so only quotes
// need doubling; a backslash is refused rather than trusted.
func quoteLiteral(s string) (string, error) {
	if strings.ContainsAny(s, "\\\x00") {
		return "", fmt.Errorf("threepc/postgres: %w: %q", resource.ErrInvalidID, s)
	}
	return "'" + strings.ReplaceAll(s, "'", "''") + "'", nil
}

// CommitPrepared commits the prepared branch xid from a pool connection.
// COMMIT PREPARED's OK is authoritative. A branch no longer prepared
// (42704) is committed if its evidence row is there; else the error wraps
// resource.ErrHeuristic.
func (r *Resource) CommitPrepared(ctx context.Context, xid resource.XID) error {
	err := r.finishPrepared(ctx, "COMMIT PREPARED", xid)
	if errors.Is(err, resource.ErrUnknownBranch) {
		return r.commitGone(ctx, xid, err)
	}
	return err
}

// RollbackPrepared rolls back the prepared branch xid from a pool
// connection. A branch no longer prepared gives ErrUnknownBranch, or
// ErrHeuristic when its evidence shows that it committed.
func (r *Resource) RollbackPrepared(ctx context.Context, xid resource.XID) error {
	err := r.finishPrepared(ctx, "ROLLBACK PREPARED", xid)
	if errors.Is(err, resource.ErrUnknownBranch) {
		return r.rollbackGone(ctx, xid, err)
	}
	return err
}

// commitGone resolves a COMMIT PREPARED that found no such gid (notFound,
// 42704): that proves nothing by itself, the evidence row decides.
func (r *Resource) commitGone(ctx context.Context, xid resource.XID, notFound error) error {
	ok, err := r.Committed(ctx, xid)
	switch {
	case err != nil:
		return fmt.Errorf("threepc/postgres: commit %s: the prepared transaction is gone (%v) and its evidence could not be read: %w", xid, notFound, err)
	case ok:
		return nil
	}
	return fmt.Errorf("threepc/postgres: commit %s: %w: the prepared transaction is gone and its evidence row is not in %s, so it did not commit: it was rolled back outside threepc (ROLLBACK PREPARED) or lost, although the transaction is decided to commit; keep its marker rows and investigate: %w",
		xid, resource.ErrHeuristic, resource.MarkerTable, pgError(notFound))
}

// rollbackGone resolves a ROLLBACK PREPARED that found no such gid
// (notFound, 42704): fine unless the evidence shows a commit.
func (r *Resource) rollbackGone(ctx context.Context, xid resource.XID, notFound error) error {
	ok, err := r.Committed(ctx, xid)
	switch {
	case err != nil:
		return fmt.Errorf("threepc/postgres: rollback %s: the prepared transaction is gone (%v) and its evidence could not be read: %w", xid, notFound, err)
	case ok:
		return fmt.Errorf("threepc/postgres: rollback %s: %w: the prepared transaction is gone and its evidence row shows that it committed, although a rollback was asked for: %w",
			xid, resource.ErrHeuristic, pgError(notFound))
	}
	return notFound
}

// pgError is the server's error in err's chain, or err itself: a
// heuristic error carries the SQLSTATE without also matching the sentinel
// (ErrUnknownBranch) of the answer it overrides.
func pgError(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr
	}
	return err
}

func (r *Resource) finishPrepared(ctx context.Context, verb string, xid resource.XID) error {
	if err := r.checkXID(xid); err != nil {
		return err
	}
	lit, err := quoteLiteral(xid.PostgresGID())
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("threepc/postgres: %s %s: %w", verb, xid, err)
	}
	_, err = r.db.ExecContext(ctx, verb+" "+lit)
	return mapError(opFinish, verb+" "+lit, err)
}

// Recover lists this resource's prepared branches in its own database:
// prepared transactions whose gid threepc did not write, and branches of
// other resources (on this or another database of the server), are left
// out.
func (r *Resource) Recover(ctx context.Context) ([]resource.PreparedBranch, error) {
	rows, err := r.db.QueryContext(ctx,
		"SELECT gid, prepared, owner FROM pg_prepared_xacts WHERE database = current_database() ORDER BY gid")
	if err != nil {
		return nil, mapError(opOther, "listing prepared transactions", err)
	}
	defer rows.Close()
	var out []resource.PreparedBranch
	for rows.Next() {
		var (
			gid, owner string
			at         time.Time
		)
		if err := rows.Scan(&gid, &at, &owner); err != nil {
			return nil, mapError(opOther, "listing prepared transactions", err)
		}
		x, ok := resource.ParsePostgresGID(gid)
		if !ok || x.Branch != r.name {
			continue
		}
		out = append(out, resource.PreparedBranch{XID: x, PreparedAt: at, Owner: owner})
	}
	if err := rows.Err(); err != nil {
		return nil, mapError(opOther, "listing prepared transactions", err)
	}
	return out, nil
}

var _ resource.ServerPreparedLister = (*Resource)(nil)

// ListServerPrepared lists every prepared transaction of the server
// (pg_prepared_xacts), threepc's and other software's, of every database:
// SameDatabase tells this resource's database from the others, and
// PreparedAt is the server's prepared time.
func (r *Resource) ListServerPrepared(ctx context.Context) ([]resource.ServerPrepared, error) {
	rows, err := r.db.QueryContext(ctx,
		"SELECT gid, prepared, owner, database, database = current_database() FROM pg_prepared_xacts ORDER BY database, gid")
	if err != nil {
		return nil, mapError(opOther, "listing the server's prepared transactions", err)
	}
	defer rows.Close()
	var out []resource.ServerPrepared
	for rows.Next() {
		var p resource.ServerPrepared
		if err := rows.Scan(&p.ID, &p.PreparedAt, &p.Owner, &p.Database, &p.SameDatabase); err != nil {
			return nil, mapError(opOther, "listing the server's prepared transactions", err)
		}
		if x, ok := resource.ParsePostgresGID(p.ID); ok {
			p.XID, p.Ours = x, true
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, mapError(opOther, "listing the server's prepared transactions", err)
	}
	return out, nil
}
