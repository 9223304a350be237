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
	"sync/atomic"
	"time"

	mysqldriver "github.com/go-sql-driver/mysql"

	"github.com/threepc/threepc/resource"
)

// Config configures a Resource. The zero value is ready to use.
type Config struct {
	// Address names the server in error messages (host:port). Open fills
	// it from the DSN when empty; New cannot see it in a *sql.DB.
	Address string

	// ReadOnlyVote turns on read-only detection (default off): a branch
	// that wrote nothing commits at the vote (XA COMMIT ... ONE PHASE),
	// votes resource.VoteReadOnly and leaves the protocol, saving its
	// prepare, its evidence row and its commit. Detection reads the
	// session's Handler counters before XA START and again before XA END:
	// two status queries on every branch, writers included, and a reused
	// connection can no longer begin with XA START alone. That cost is why
	// it is off by default: in one `threepc bench` run (README,
	// Performance; every branch wrote) 3PC did 515 tx/s with it on against
	// 815 with it off at concurrency 1 (p50 1.86 ms against 1.19 ms), and
	// 1089 against 1913 at concurrency 16. Turn it on when many
	// transactions enlist a MySQL branch that only reads.
	ReadOnlyVote bool
}

// URL and DSN parameters that Open takes as Config fields rather than
// passing them to the server as session variables.
const (
	// ParamReadOnlyVote ("true"/"false") sets Config.ReadOnlyVote:
	// threepc_read_only_vote=true turns read-only detection on; false,
	// like leaving it out, keeps it off.
	ParamReadOnlyVote = "threepc_read_only_vote"
)

// paramKeepAttached chose the detached mode of the "3pc1" driver, which is
// gone: a prepared branch always stays on its session (see the package
// documentation). It is refused rather than passed to the server as a
// session variable, which would fail with a less helpful error.
const paramKeepAttached = "threepc_keep_attached"

// takeParams moves the driver's own parameters from dc into cfg, so that
// a URL alone (as the threepc command takes it) can choose them.
func takeParams(dc *mysqldriver.Config, cfg *Config) error {
	if _, ok := dc.Params[paramKeepAttached]; ok {
		return fmt.Errorf("threepc/mysql: parameter %s was removed: prepared branches always stay attached to their session and commit there; drop the parameter", paramKeepAttached)
	}
	for name, set := range map[string]func(bool){
		ParamReadOnlyVote: func(v bool) { cfg.ReadOnlyVote = v },
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
	cfg    Config

	mu      sync.Mutex
	version *serverVersion // nil until detected
	dbname  string         // the schema: from Open's DSN, or SELECT DATABASE() with the version
	dbTag   string         // resource.DatabaseTag(dbname), "" until known

	// multi says whether the pool's connections take several statements
	// in one COM_QUERY (go-sql-driver's MultiStatements): multiUnknown
	// until the first try on a pool given to New.
	multi atomic.Int32

	sessions sessionCache
}

// States of Resource.multi.
const (
	multiUnknown int32 = iota
	multiOn
	multiOff
)

var _ resource.Resource = (*Resource)(nil)

// New returns a resource named name on db, which must be a pool of
// github.com/go-sql-driver/mysql. The name is validated with
// resource.ValidateName before anything else. Close does not close db.
func New(name string, db *sql.DB, cfg Config) (*Resource, error) {
	if err := resource.ValidateName(name); err != nil {
		return nil, err // names the problem in full: no driver prefix
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
// ("mysql://user:pass@host:port/db?param=value", or mariadb://, see
// ParseURL). No
// connection is made until the resource is used (call Check at start-up).
func Open(name, dsn string, cfg Config) (*Resource, error) {
	if err := resource.ValidateName(name); err != nil {
		return nil, err // names the problem in full: no driver prefix
	}
	var (
		dc  *mysqldriver.Config
		err error
	)
	if isURL(dsn) {
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
	if dc.DBName == "" {
		return nil, fmt.Errorf("threepc/mysql: the DSN names no database: the marker table lives in one, and branch ids name it (XA RECOVER lists the whole server)")
	}
	// Prepare sends the evidence row's INSERT, XA END and XA PREPARE in
	// one round trip.
	dc.MultiStatements = true
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
	r.dbTag = resource.DatabaseTag(dc.DBName)
	r.multi.Store(multiOn)
	return r, nil
}

// ServerAddress is the server's host:port (Config.Address)
// (tracing.ServerAddresser).
func (r *Resource) ServerAddress() string { return r.cfg.Address }

// DatabaseName is the schema's name: from the DSN when the resource was
// made by Open, else known once the resource has talked to the server
// ("" before) (tracing.DatabaseNamer).
func (r *Resource) DatabaseName() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.dbname
}

// isURL reports whether dsn is a mysql:// or mariadb:// URL rather than a
// go-sql-driver DSN.
func isURL(dsn string) bool {
	scheme, _, ok := strings.Cut(dsn, "://")
	return ok && (strings.EqualFold(scheme, "mysql") || strings.EqualFold(scheme, "mariadb"))
}

// ParseURL converts a URL "mysql://user:password@host:port/database?params"
// (or mariadb://, the same) into a go-sql-driver configuration. The port
// defaults to 3306; query
// parameters are passed through as go-sql-driver DSN parameters
// (e.g. tls=true, timeout=5s), unknown ones as session variables, as the
// driver does.
func ParseURL(rawURL string) (*mysqldriver.Config, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("threepc/mysql: invalid URL: %w", err)
	}
	if u.Scheme != "mysql" && u.Scheme != "mariadb" {
		return nil, fmt.Errorf("threepc/mysql: invalid URL %q: scheme %q, want mysql:// or mariadb://", redact(u), u.Scheme)
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
	v, _, err := r.serverInfo(ctx)
	return v, err
}

// serverInfo returns the server's version and the DatabaseTag of the
// resource's schema, detected once (one query): branch ids carry the tag,
// and Recover keeps only branches that carry it.
func (r *Resource) serverInfo(ctx context.Context) (serverVersion, string, error) {
	r.mu.Lock()
	v, tag := r.version, r.dbTag
	r.mu.Unlock()
	if v != nil && tag != "" {
		return *v, tag, nil
	}
	var (
		s      string
		dbname sql.NullString
	)
	if err := r.db.QueryRowContext(ctx, "SELECT VERSION(), DATABASE()").Scan(&s, &dbname); err != nil {
		return serverVersion{}, "", r.unreachable("SELECT VERSION()", err)
	}
	pv, err := parseVersion(s)
	if err != nil {
		return serverVersion{}, "", err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.dbTag == "" {
		if !dbname.Valid || dbname.String == "" {
			return serverVersion{}, "", fmt.Errorf("threepc/mysql: resource %q: the pool's connections have no default database (SELECT DATABASE() is NULL): name one in the DSN; the marker table lives there, and branch ids name it", r.name)
		}
		r.dbname = dbname.String
		r.dbTag = resource.DatabaseTag(dbname.String)
	}
	r.version = &pv
	return pv, r.dbTag, nil
}

// unreachable wraps err, naming the server's address when err is a
// connection failure.
func (r *Resource) unreachable(what string, err error) error {
	if isConnError(err) && r.cfg.Address != "" {
		return wrap(what+" on "+r.cfg.Address, resource.ErrUnreachable, err)
	}
	return wrapConn(what, err)
}

// Check verifies that the server can run threepc transactions: it is
// reachable, it is MariaDB 10.5+ or MySQL 8+, InnoDB supports XA, the
// user may run XA RECOVER (MySQL 8: XA_RECOVER_ADMIN) and read
// information_schema.INNODB_TRX where a hand-over needs it (PROCESS), and
// the marker table exists with migration 2 applied (the branch column of
// evidence rows).
func (r *Resource) Check(ctx context.Context) error {
	if err := r.db.PingContext(ctx); err != nil {
		addr := r.cfg.Address
		if addr == "" {
			addr = "the server"
		}
		if rejected(err) {
			return wrap("connecting to "+addr, resource.ErrConnectionRejected, err)
		}
		return fmt.Errorf("threepc/mysql: cannot reach %s: %w: %w", addr, resource.ErrUnreachable, err)
	}
	v, _, err := r.serverInfo(ctx)
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
	if v.attachesPrepared() {
		// The hand-over of a branch attached to a stalled session waits on
		// INNODB_TRX, which needs PROCESS.
		var n int
		err := r.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_mysql_thread_id = CONNECTION_ID()").Scan(&n)
		if err != nil {
			if mysqlErrno(err) == erAccessDenied || mysqlErrno(err) == erDBAccessDenied {
				return wrap("reading information_schema.INNODB_TRX: the database user needs the PROCESS privilege (to tell when the server has taken over a prepared branch from a session that ended); run: GRANT PROCESS ON *.* TO '<user>'@'<host>'", resource.ErrMissingPrivilege, err)
			}
			return r.unreachable("reading information_schema.INNODB_TRX", err)
		}
	}
	var one int
	err = r.db.QueryRowContext(ctx, "SELECT 1 FROM "+resource.MarkerTable+" WHERE branch = '' AND space = '' LIMIT 1").Scan(&one)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return r.markerError("checking the marker table", err)
	}
	return nil
}

// xidLiteral returns the XA id as SQL: X'gtrid',X'bqual',formatID.
// Hexadecimal literals need no escaping whatever the sql_mode
// (NO_BACKSLASH_ESCAPES) or connection charset; the parts are validated
// before anyway.
func xidLiteral(x resource.XID, dbTag string) string {
	gtrid, bqual, formatID := x.MySQL(dbTag)
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

// CommitPrepared commits a prepared branch by id from a pool connection,
// taking it over from the session that holds it first (see the package
// documentation: the session is killed, and the server must have handed
// the branch to the storage engine before XA COMMIT by id is safe). An OK
// to a by-id XA COMMIT is not proof on MariaDB or MySQL: nil is returned
// only once the branch's evidence row is visible. A branch that is gone
// without its evidence wraps resource.ErrHeuristic; one still held by a
// session when ctx ends wraps resource.ErrBranchBusy.
func (r *Resource) CommitPrepared(ctx context.Context, xid resource.XID) error {
	if err := r.checkXID(xid); err != nil {
		return err
	}
	return r.finishByID(ctx, xid, true)
}

// RollbackPrepared rolls back a prepared branch by id, taking it over
// first as CommitPrepared does. A branch that is gone gives
// resource.ErrUnknownBranch, or resource.ErrHeuristic if its evidence row
// shows that it committed.
func (r *Resource) RollbackPrepared(ctx context.Context, xid resource.XID) error {
	if err := r.checkXID(xid); err != nil {
		return err
	}
	return r.finishByID(ctx, xid, false)
}

// Recover lists this resource's prepared branches: XA RECOVER lists the
// whole server, so entries that threepc did not write, branches of other
// databases (the database tag in the id) and of other resources (the name)
// are left out. Every namespace is listed.
func (r *Resource) Recover(ctx context.Context) ([]resource.PreparedBranch, error) {
	_, tag, err := r.serverInfo(ctx)
	if err != nil {
		return nil, err
	}
	all, err := r.recover(ctx)
	if err != nil {
		return nil, err
	}
	var out []resource.PreparedBranch
	for _, p := range all {
		if p.dbTag == tag && p.xid.Branch == r.name {
			out = append(out, resource.PreparedBranch{XID: p.xid})
		}
	}
	return out, nil
}

// listedXID is a threepc branch listed by XA RECOVER.
type listedXID struct {
	xid   resource.XID
	dbTag string
}

// recover returns every threepc XID that XA RECOVER lists, whatever its
// database.
func (r *Resource) recover(ctx context.Context) ([]listedXID, error) {
	all, err := r.xaRecover(ctx)
	if err != nil {
		return nil, err
	}
	var out []listedXID
	for _, e := range all {
		if e.ours {
			out = append(out, listedXID{xid: e.xid, dbTag: e.dbTag})
		}
	}
	return out, nil
}

// xaEntry is one row of XA RECOVER.
type xaEntry struct {
	formatID     int64
	gtrid, bqual string
	// data is the row's data column, when its lengths do not match it
	// (gtrid and bqual are then empty).
	data  []byte
	valid bool // the lengths match the data
	ours  bool // a threepc id: xid and dbTag are set
	xid   resource.XID
	dbTag string
}

// xaRecover runs plain XA RECOVER, whose data column is the raw bytes of
// gtrid followed by bqual (XA RECOVER CONVERT XID would hex-encode them
// into SQL that has to be parsed again), and returns every row: the
// server's prepared XA transactions, whatever their database and writer.
func (r *Resource) xaRecover(ctx context.Context) ([]xaEntry, error) {
	rows, err := r.db.QueryContext(ctx, "XA RECOVER")
	if err != nil {
		if mysqlErrno(err) == erAccessDenied {
			return nil, wrap("XA RECOVER: the database user needs the XA_RECOVER_ADMIN privilege (MySQL 8); run: GRANT XA_RECOVER_ADMIN ON *.* TO '<user>'@'<host>'", resource.ErrMissingPrivilege, err)
		}
		return nil, r.unreachable("XA RECOVER", err)
	}
	defer rows.Close()
	var out []xaEntry
	for rows.Next() {
		var formatID, gtridLen, bqualLen int64
		var data []byte
		if err := rows.Scan(&formatID, &gtridLen, &bqualLen, &data); err != nil {
			return nil, wrap("XA RECOVER", nil, err)
		}
		e := xaEntry{formatID: formatID}
		if gtridLen < 0 || bqualLen < 0 || gtridLen+bqualLen != int64(len(data)) {
			e.data = data
			out = append(out, e)
			continue
		}
		e.valid = true
		e.gtrid, e.bqual = string(data[:gtridLen]), string(data[gtridLen:])
		e.xid, e.dbTag, e.ours = resource.ParseMySQL(int(formatID), e.gtrid, e.bqual)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, r.unreachable("XA RECOVER", err)
	}
	return out, nil
}

var _ resource.ServerPreparedLister = (*Resource)(nil)

// ListServerPrepared lists every prepared XA transaction of the server
// (XA RECOVER), threepc's and other software's, of every database. A
// threepc branch's database is known by the database tag in its id; other
// software's XA transactions have no database (SameDatabase false). XA
// RECOVER gives no time: PreparedAt is always zero, and XID.Time is the
// age of a threepc branch. A row whose lengths do not match its data is
// listed with the raw data as its ID (X'data') and is never taken for
// threepc's.
func (r *Resource) ListServerPrepared(ctx context.Context) ([]resource.ServerPrepared, error) {
	_, tag, err := r.serverInfo(ctx)
	if err != nil {
		return nil, err
	}
	all, err := r.xaRecover(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]resource.ServerPrepared, 0, len(all))
	for _, e := range all {
		p := resource.ServerPrepared{ID: fmt.Sprintf("X'%x'", e.data)}
		if e.valid {
			p.ID = fmt.Sprintf("X'%x',X'%x',%d", e.gtrid, e.bqual, e.formatID)
		}
		if e.ours {
			p.Ours, p.XID, p.SameDatabase = true, e.xid, e.dbTag == tag
		}
		out = append(out, p)
	}
	return out, nil
}

// discard closes conn instead of handing it back to the pool: returning
// driver.ErrBadConn from Raw makes database/sql close the driver
// connection. The server then rolls back an unprepared XA of the session
// and detaches a prepared one.
func discard(conn *sql.Conn) {
	_ = conn.Raw(func(any) error { return driver.ErrBadConn })
	_ = conn.Close()
}
