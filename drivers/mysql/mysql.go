package mysql

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	mysqldriver "github.com/go-sql-driver/mysql"

	"github.com/threepc/threepc/resource"
)

// Config configures a Resource. The zero value is ready to use.
type Config struct {
	// Address names the server in error messages (host:port). Open fills
	// it from the DSN when empty; New cannot see it in a *sql.DB.
	Address string

	// DisableReadOnlyVote makes every branch vote resource.VotePrepared,
	// even one that wrote nothing, so that the read-only optimization can
	// be measured against its absence. It also saves the two status
	// queries per branch that read-only detection costs.
	DisableReadOnlyVote bool

	// KeepAttached keeps a prepared branch attached to its pinned session
	// (MariaDB, and MySQL with xa_detach_on_prepare=OFF) and commits it
	// there, saving the reconnect that detaching costs. The price: while
	// the coordinator holds the branch, the server answers 1397 XAER_NOTA
	// to everyone else, so recovery cannot finish the branch of a stalled
	// coordinator until its connection dies. By default Prepare ends the
	// session right after XA PREPARE, which detaches the branch, and
	// Commit and Rollback finish it by id.
	KeepAttached bool
}

// URL and DSN parameters that Open takes as Config fields rather than
// passing them to the server as session variables.
const (
	// ParamKeepAttached ("true"/"false") sets Config.KeepAttached.
	ParamKeepAttached = "threepc_keep_attached"
	// ParamReadOnlyVote ("true"/"false") clears Config.DisableReadOnlyVote
	// when true and sets it when false.
	ParamReadOnlyVote = "threepc_read_only_vote"
)

// takeParams moves the driver's own parameters from dc into cfg, so that
// a URL alone (as the threepc command takes it) can choose them.
func takeParams(dc *mysqldriver.Config, cfg *Config) error {
	for name, set := range map[string]func(bool){
		ParamKeepAttached: func(v bool) { cfg.KeepAttached = v },
		ParamReadOnlyVote: func(v bool) { cfg.DisableReadOnlyVote = !v },
	} {
		s, ok := dc.Params[name]
		if !ok {
			continue
		}
		delete(dc.Params, name)
		v, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("threepc/mysql: parameter %s=%q: want true or false", name, s)
		}
		set(v)
	}
	return nil
}

// Resource is a MySQL or MariaDB schema taking part in threepc
// transactions. It implements resource.Resource and is safe for concurrent
// use.
type Resource struct {
	name   string
	db     *sql.DB
	ownsDB bool
	dbname string
	cfg    Config

	mu      sync.Mutex
	version *serverVersion // nil until detected

	sessions sessionCache
}

var _ resource.Resource = (*Resource)(nil)

// New returns a resource named name on db, which must be a pool of
// github.com/go-sql-driver/mysql. The name is validated with
// resource.ValidateName before anything else. Close does not close db.
func New(name string, db *sql.DB, cfg Config) (*Resource, error) {
	if err := resource.ValidateName(name); err != nil {
		return nil, fmt.Errorf("threepc/mysql: %w", err)
	}
	if db == nil {
		return nil, errors.New("threepc/mysql: nil *sql.DB")
	}
	switch db.Driver().(type) {
	case *mysqldriver.MySQLDriver, mysqldriver.MySQLDriver:
	default:
		return nil, fmt.Errorf("threepc/mysql: the *sql.DB uses driver %T, want github.com/go-sql-driver/mysql", db.Driver())
	}
	return &Resource{name: name, db: db, cfg: cfg}, nil
}

// Open opens a pool for dsn and returns a resource named name on it;
// Close closes the pool. dsn is either a go-sql-driver DSN
// ("user:pass@tcp(host:port)/db?param=value") or a URL
// ("mysql://user:pass@host:port/db?param=value", see ParseURL). No
// connection is made until the resource is used (call Check at start-up).
func Open(name, dsn string, cfg Config) (*Resource, error) {
	if err := resource.ValidateName(name); err != nil {
		return nil, fmt.Errorf("threepc/mysql: %w", err)
	}
	var (
		dc  *mysqldriver.Config
		err error
	)
	if strings.HasPrefix(dsn, "mysql://") {
		dc, err = ParseURL(dsn)
	} else {
		dc, err = mysqldriver.ParseDSN(dsn)
		if err != nil {
			err = fmt.Errorf("threepc/mysql: invalid DSN: %w", err)
		}
	}
	if err != nil {
		return nil, err
	}
	// The driver reads created_at with UNIX_TIMESTAMP itself, so parseTime
	// is not needed; these settings only make DATETIME values of user
	// queries come back as time.Time in UTC, a sane default.
	dc.ParseTime = true
	dc.Loc = time.UTC
	if err := takeParams(dc, &cfg); err != nil {
		return nil, err
	}
	connector, err := mysqldriver.NewConnector(dc)
	if err != nil {
		return nil, fmt.Errorf("threepc/mysql: %w", err)
	}
	if cfg.Address == "" {
		cfg.Address = dc.Addr
	}
	r, err := New(name, sql.OpenDB(connector), cfg)
	if err != nil {
		return nil, err
	}
	r.ownsDB = true
	r.dbname = dc.DBName
	return r, nil
}

// ServerAddress is the server's host:port (Config.Address)
// (tracing.ServerAddresser).
func (r *Resource) ServerAddress() string { return r.cfg.Address }

// DatabaseName is the schema's name when the resource was made by Open, ""
// otherwise (tracing.DatabaseNamer).
func (r *Resource) DatabaseName() string { return r.dbname }

// ParseURL converts a URL "mysql://user:password@host:port/database?params"
// into a go-sql-driver configuration. The port defaults to 3306; query
// parameters are passed through as go-sql-driver DSN parameters
// (e.g. tls=true, timeout=5s), unknown ones as session variables, as the
// driver does.
func ParseURL(rawURL string) (*mysqldriver.Config, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("threepc/mysql: invalid URL: %w", err)
	}
	if u.Scheme != "mysql" {
		return nil, fmt.Errorf("threepc/mysql: invalid URL %q: scheme %q, want mysql://", redact(u), u.Scheme)
	}
	if u.Opaque != "" {
		return nil, fmt.Errorf("threepc/mysql: invalid URL %q: want mysql://host", redact(u))
	}
	host := u.Hostname()
	if host == "" {
		return nil, fmt.Errorf("threepc/mysql: invalid URL %q: missing host", redact(u))
	}
	port := u.Port()
	if port == "" {
		if strings.HasSuffix(u.Host, ":") {
			return nil, fmt.Errorf("threepc/mysql: invalid URL %q: empty port", redact(u))
		}
		port = "3306"
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return nil, fmt.Errorf("threepc/mysql: invalid URL %q: bad port %q", redact(u), port)
	}
	db := strings.TrimPrefix(u.Path, "/")
	if strings.Contains(db, "/") {
		return nil, fmt.Errorf("threepc/mysql: invalid URL %q: database name %q contains '/'", redact(u), db)
	}
	// Reuse the driver's own DSN parser for the parameters, so that every
	// parameter it knows is typed and validated exactly as in a DSN.
	base := mysqldriver.NewConfig()
	base.Net = "tcp"
	base.Addr = net.JoinHostPort(host, port)
	base.DBName = db
	dsn := base.FormatDSN()
	if u.RawQuery != "" {
		if strings.Contains(dsn, "?") {
			dsn += "&" + u.RawQuery
		} else {
			dsn += "?" + u.RawQuery
		}
	}
	cfg, err := mysqldriver.ParseDSN(dsn)
	if err != nil {
		return nil, fmt.Errorf("threepc/mysql: invalid URL %q: %w", redact(u), err)
	}
	if u.User != nil {
		cfg.User = u.User.Username()
		cfg.Passwd, _ = u.User.Password()
	}
	return cfg, nil
}

// redact returns u without its password, for error messages.
func redact(u *url.URL) string { return u.Redacted() }

// Name is the resource's name.
func (r *Resource) Name() string { return r.name }

// System is "mariadb" or "mysql", detected from SELECT VERSION() the first
// time the resource talks to the server. Before that, and if detection
// fails, it is "mysql", the OpenTelemetry name for the family.
func (r *Resource) System() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.version == nil {
		return "mysql"
	}
	return r.version.system
}

// DB is the resource's connection pool.
func (r *Resource) DB() *sql.DB { return r.db }

// Close closes the pool if Open opened it.
func (r *Resource) Close() error {
	if !r.ownsDB {
		return nil
	}
	return r.db.Close()
}

// serverVersion returns the server's version, detected once.
func (r *Resource) serverVersion(ctx context.Context) (serverVersion, error) {
	r.mu.Lock()
	v := r.version
	r.mu.Unlock()
	if v != nil {
		return *v, nil
	}
	var s string
	if err := r.db.QueryRowContext(ctx, "SELECT VERSION()").Scan(&s); err != nil {
		return serverVersion{}, r.unreachable("SELECT VERSION()", err)
	}
	pv, err := parseVersion(s)
	if err != nil {
		return serverVersion{}, err
	}
	r.mu.Lock()
	r.version = &pv
	r.mu.Unlock()
	return pv, nil
}

// unreachable wraps err, naming the server's address when err is a
// connection failure.
func (r *Resource) unreachable(what string, err error) error {
	if isConnErr(err) && r.cfg.Address != "" {
		return wrap(what+" on "+r.cfg.Address, resource.ErrUnreachable, err)
	}
	return wrapConn(what, err)
}

// Check verifies that the server can run threepc transactions: it is
// reachable, it is MariaDB 10.5+ or MySQL 8+, InnoDB supports XA, the
// user may run XA RECOVER (MySQL 8: XA_RECOVER_ADMIN), and the marker
// table exists.
func (r *Resource) Check(ctx context.Context) error {
	if err := r.db.PingContext(ctx); err != nil {
		addr := r.cfg.Address
		if addr == "" {
			addr = "the server"
		}
		return fmt.Errorf("threepc/mysql: cannot reach %s: %w: %w", addr, resource.ErrUnreachable, err)
	}
	v, err := r.serverVersion(ctx)
	if err != nil {
		return err
	}
	if err := v.supported(); err != nil {
		return err
	}
	var xa sql.NullString
	err = r.db.QueryRowContext(ctx, "SELECT XA FROM information_schema.ENGINES WHERE ENGINE = 'InnoDB' AND SUPPORT IN ('YES', 'DEFAULT')").Scan(&xa)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("threepc/mysql: %w: the InnoDB storage engine is not available", resource.ErrUnsupported)
	case err != nil:
		return r.unreachable("checking XA support", err)
	case xa.String != "YES":
		return fmt.Errorf("threepc/mysql: %w: InnoDB does not support XA transactions on this server", resource.ErrUnsupported)
	}
	if _, err := r.recover(ctx); err != nil {
		return err
	}
	var one int
	err = r.db.QueryRowContext(ctx, "SELECT 1 FROM "+resource.MarkerTable+" LIMIT 1").Scan(&one)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return r.markerErr("checking the marker table", err)
	}
	return nil
}

// markerErr maps errors of statements on the marker table.
func (r *Resource) markerErr(what string, err error) error {
	if mysqlErrno(err) == erNoSuchTable {
		return wrap(what+": table "+resource.MarkerTable+" does not exist; run the threepc migrations (package migrations, DialectMySQL, or `threepc migrate`)", resource.ErrMarkerTableMissing, err)
	}
	return r.unreachable(what, err)
}

// xidLiteral returns the XA id as SQL: X'gtrid',X'bqual',formatID.
// Hexadecimal literals need no escaping whatever the sql_mode
// (NO_BACKSLASH_ESCAPES) or connection charset; the parts are validated
// before anyway.
func xidLiteral(x resource.XID) string {
	gtrid, bqual, formatID := x.MySQL()
	return fmt.Sprintf("X'%x',X'%x',%d", gtrid, bqual, formatID)
}

// checkXID validates a branch id of this resource.
func (r *Resource) checkXID(x resource.XID) error {
	if err := x.Validate(); err != nil {
		return fmt.Errorf("threepc/mysql: %w", err)
	}
	if x.Branch != r.name {
		return fmt.Errorf("threepc/mysql: %w: branch %q of %s does not belong to resource %q", resource.ErrInvalidID, x.Branch, x, r.name)
	}
	return nil
}

// CommitPrepared commits a prepared branch by id from a pool connection.
// 1397 XAER_NOTA maps to resource.ErrUnknownBranch when XA RECOVER does not
// list the branch; when it does, the branch is prepared but attached to a
// live session (MariaDB, Config.KeepAttached or a session still ending)
// and the error wraps resource.ErrBranchBusy instead, as does 1399
// XAER_RMFAIL. On
// MariaDB, 1402 XA_RBROLLBACK for a detached prepared branch means that
// the branch wrote nothing (the server rolled it back when its session
// ended); committing such a branch is a no-op, so nil is returned.
func (r *Resource) CommitPrepared(ctx context.Context, xid resource.XID) error {
	if err := r.checkXID(xid); err != nil {
		return err
	}
	return r.finishByID(ctx, xid, true)
}

// RollbackPrepared rolls back a prepared branch by id, with the same error
// mapping as CommitPrepared.
func (r *Resource) RollbackPrepared(ctx context.Context, xid resource.XID) error {
	if err := r.checkXID(xid); err != nil {
		return err
	}
	return r.finishByID(ctx, xid, false)
}

func (r *Resource) finishByID(ctx context.Context, xid resource.XID, commit bool) error {
	v, err := r.serverVersion(ctx)
	if err != nil {
		return err
	}
	verb := "XA ROLLBACK"
	if commit {
		verb = "XA COMMIT"
	}
	what := fmt.Sprintf("%s of %s", verb, xid)
	// A connection of its own, so that an error can discard it: XA COMMIT
	// by id leaves no XA state in the session, but a broken statement
	// might.
	conn, err := r.db.Conn(ctx)
	if err != nil {
		return r.unreachable(what, err)
	}
	_, err = conn.ExecContext(ctx, verb+" "+xidLiteral(xid))
	if err != nil && mysqlErrno(err) == 0 {
		discard(conn)
	} else {
		_ = conn.Close()
	}
	if err == nil {
		return nil
	}
	switch mysqlErrno(err) {
	case erXAERNota:
		// MariaDB also says 1397 for a branch prepared and still attached
		// to a live session. XA RECOVER lists those: such a branch is
		// busy, not unknown.
		all, rerr := r.recover(ctx)
		if rerr != nil {
			return fmt.Errorf("threepc/mysql: %s: %w (and XA RECOVER, to tell whether the branch is attached to another session, failed: %w)", what, err, rerr)
		}
		for _, x := range all {
			if x == xid {
				return wrap(what+": the prepared branch is attached to another live session; retry once that session ends", resource.ErrBranchBusy, err)
			}
		}
		return wrap(what, resource.ErrUnknownBranch, err)
	case erXAERRmfail:
		return wrap(what, resource.ErrBranchBusy, err)
	case erXARBRollback:
		if v.system == "mariadb" {
			return nil
		}
		return wrap(what, resource.ErrUnknownBranch, err)
	}
	return r.unreachable(what, err)
}

// Recover lists this resource's prepared branches. XA RECOVER lists the
// whole server; entries that threepc did not write, and branches of other
// resources (other names) are left out.
func (r *Resource) Recover(ctx context.Context) ([]resource.PreparedBranch, error) {
	all, err := r.recover(ctx)
	if err != nil {
		return nil, err
	}
	var out []resource.PreparedBranch
	for _, x := range all {
		if x.Branch == r.name {
			out = append(out, resource.PreparedBranch{XID: x})
		}
	}
	return out, nil
}

// recover runs plain XA RECOVER, whose data column is the raw bytes of
// gtrid followed by bqual (XA RECOVER CONVERT XID would hex-encode them
// into SQL that has to be parsed again), and returns every threepc XID.
func (r *Resource) recover(ctx context.Context) ([]resource.XID, error) {
	rows, err := r.db.QueryContext(ctx, "XA RECOVER")
	if err != nil {
		if mysqlErrno(err) == erAccessDenied {
			return nil, wrap("XA RECOVER: the database user needs the XA_RECOVER_ADMIN privilege (MySQL 8); run: GRANT XA_RECOVER_ADMIN ON *.* TO '<user>'@'<host>'", resource.ErrMissingPrivilege, err)
		}
		return nil, r.unreachable("XA RECOVER", err)
	}
	defer rows.Close()
	var out []resource.XID
	for rows.Next() {
		var formatID, gtridLen, bqualLen int64
		var data []byte
		if err := rows.Scan(&formatID, &gtridLen, &bqualLen, &data); err != nil {
			return nil, wrap("XA RECOVER", nil, err)
		}
		if gtridLen < 0 || bqualLen < 0 || gtridLen+bqualLen != int64(len(data)) {
			continue
		}
		x, ok := resource.ParseMySQL(int(formatID), string(data[:gtridLen]), string(data[gtridLen:]))
		if ok {
			out = append(out, x)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, r.unreachable("XA RECOVER", err)
	}
	return out, nil
}

// InsertMarker inserts a marker row; a row for the gtid already there
// fails with resource.ErrMarkerExists (1062 on the primary key).
func (r *Resource) InsertMarker(ctx context.Context, m resource.Marker) error {
	if err := m.Validate(); err != nil {
		return fmt.Errorf("threepc/mysql: %w", err)
	}
	_, err := r.db.ExecContext(ctx, insertMarkerSQL(m))
	if err == nil {
		return nil
	}
	if mysqlErrno(err) == erDupEntry {
		return wrap("marker of "+m.GTID, resource.ErrMarkerExists, err)
	}
	return r.markerErr("inserting the marker of "+m.GTID, err)
}

// markerColumns are read by scanMarker. created_at is read as
// microseconds since the epoch, which does not depend on the session's
// time_zone nor on the driver's parseTime setting.
const markerColumns = "gtid, state, primary_name, participants, owner, CAST(UNIX_TIMESTAMP(created_at) * 1000000 AS SIGNED)"

func scanMarker(s interface{ Scan(...any) error }) (resource.Marker, error) {
	var (
		m            resource.Marker
		state, parts string
		micros       int64
	)
	if err := s.Scan(&m.GTID, &state, &m.Primary, &parts, &m.Owner, &micros); err != nil {
		return resource.Marker{}, err
	}
	m.State = resource.MarkerState(state)
	m.Participants = resource.SplitParticipants(parts)
	m.CreatedAt = time.UnixMicro(micros)
	return m, nil
}

// ReadMarker reads the marker row of gtid, or fails with
// resource.ErrNoMarker.
func (r *Resource) ReadMarker(ctx context.Context, gtid string) (resource.Marker, error) {
	if err := resource.ValidateGTID(gtid); err != nil {
		return resource.Marker{}, fmt.Errorf("threepc/mysql: %w", err)
	}
	// A literal (validated above) instead of a bind parameter saves the
	// server-side prepare round trip.
	m, err := scanMarker(r.db.QueryRowContext(ctx, "SELECT "+markerColumns+" FROM "+resource.MarkerTable+" WHERE gtid = '"+gtid+"'"))
	if errors.Is(err, sql.ErrNoRows) {
		return resource.Marker{}, fmt.Errorf("threepc/mysql: marker of %s: %w", gtid, resource.ErrNoMarker)
	}
	if err != nil {
		return resource.Marker{}, r.markerErr("reading the marker of "+gtid, err)
	}
	return m, nil
}

// ListMarkers lists every marker row, ordered by gtid (so by age).
func (r *Resource) ListMarkers(ctx context.Context) ([]resource.Marker, error) {
	rows, err := r.db.QueryContext(ctx, "SELECT "+markerColumns+" FROM "+resource.MarkerTable+" ORDER BY gtid")
	if err != nil {
		return nil, r.markerErr("listing markers", err)
	}
	defer rows.Close()
	var out []resource.Marker
	for rows.Next() {
		m, err := scanMarker(rows)
		if err != nil {
			return nil, r.markerErr("listing markers", err)
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, r.markerErr("listing markers", err)
	}
	return out, nil
}

// deleteBatch bounds the placeholders of one DELETE.
const deleteBatch = 500

// DeleteMarkers deletes the marker rows of gtids; missing rows are not an
// error.
func (r *Resource) DeleteMarkers(ctx context.Context, gtids ...string) error {
	for _, g := range gtids {
		if err := resource.ValidateGTID(g); err != nil {
			return fmt.Errorf("threepc/mysql: %w", err)
		}
	}
	for len(gtids) > 0 {
		n := min(len(gtids), deleteBatch)
		// Literals rather than bind parameters: one round trip instead
		// of a server-side prepare and execute. ValidateGTID above
		// restricts gtids to Crockford base32.
		var q strings.Builder
		q.Grow(64 + n*(len(gtids[0])+4))
		q.WriteString("DELETE FROM " + resource.MarkerTable + " WHERE gtid IN (")
		for i, g := range gtids[:n] {
			if i > 0 {
				q.WriteString(", ")
			}
			q.WriteString("'" + g + "'")
		}
		q.WriteString(")")
		if _, err := r.db.ExecContext(ctx, q.String()); err != nil {
			return r.markerErr("deleting markers", err)
		}
		gtids = gtids[n:]
	}
	return nil
}

// discard closes conn instead of handing it back to the pool: returning
// driver.ErrBadConn from Raw makes database/sql close the driver
// connection. The server then rolls back an unprepared XA of the session
// and detaches a prepared one.
func discard(conn *sql.Conn) {
	_ = conn.Raw(func(any) error { return driver.ErrBadConn })
	_ = conn.Close()
}
