package mysql

import (
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"

	mysqldriver "github.com/go-sql-driver/mysql"

	"github.com/threepc/threepc/internal/telemetry"
	"github.com/threepc/threepc/resource"
)

func TestParseVersion(t *testing.T) {
	for _, c := range []struct {
		in                  string
		system              string
		major, minor, patch int
		supported, detach   bool
	}{
		{"10.11.19-MariaDB-0+deb12u1", "mariadb", 10, 11, 19, true, false},
		{"5.5.5-10.11.6-MariaDB", "mariadb", 10, 11, 6, true, false},
		{"10.4.32-MariaDB-log", "mariadb", 10, 4, 32, false, false},
		{"10.5.0-MariaDB", "mariadb", 10, 5, 0, true, false},
		{"11.4.2-MariaDB-ubu2404", "mariadb", 11, 4, 2, true, false},
		{"8.0.28", "mysql", 8, 0, 28, true, false},
		{"8.0.29", "mysql", 8, 0, 29, true, true},
		{"8.4.2-commercial", "mysql", 8, 4, 2, true, true},
		{"9.1.0", "mysql", 9, 1, 0, true, true},
		{"5.7.44-log", "mysql", 5, 7, 44, false, false},
		{"8.0", "mysql", 8, 0, 0, true, false},
	} {
		v, err := parseVersion(c.in)
		if err != nil {
			t.Errorf("parseVersion(%q): %v", c.in, err)
			continue
		}
		if v.system != c.system || v.major != c.major || v.minor != c.minor || v.patch != c.patch {
			t.Errorf("parseVersion(%q) = %s %d.%d.%d, want %s %d.%d.%d", c.in, v.system, v.major, v.minor, v.patch, c.system, c.major, c.minor, c.patch)
		}
		if err := v.supported(); (err == nil) != c.supported {
			t.Errorf("%q supported: %v, want %v", c.in, err, c.supported)
		} else if err != nil && !errors.Is(err, resource.ErrUnsupported) {
			t.Errorf("%q: %v does not wrap ErrUnsupported", c.in, err)
		}
		if v.detachCapable() != c.detach {
			t.Errorf("%q detachCapable = %v, want %v", c.in, v.detachCapable(), c.detach)
		}
	}
	for _, bad := range []string{"", "banana", "8", "8.x.1", "1.2.3.4"} {
		if _, err := parseVersion(bad); err == nil {
			t.Errorf("parseVersion(%q) succeeded", bad)
		}
	}
}

func TestParseURL(t *testing.T) {
	cfg, err := ParseURL("mysql://app:s%40cret@127.0.0.1:3307/shop?timeout=5s&tls=false&sql_mode=%27ANSI%27")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.User != "app" || cfg.Passwd != "s@cret" || cfg.Addr != "127.0.0.1:3307" || cfg.DBName != "shop" || cfg.Net != "tcp" {
		t.Errorf("got user %q pass %q addr %q db %q net %q", cfg.User, cfg.Passwd, cfg.Addr, cfg.DBName, cfg.Net)
	}
	if cfg.Timeout.String() != "5s" {
		t.Errorf("timeout param lost: %v", cfg.Timeout)
	}
	if cfg.Params["sql_mode"] != "'ANSI'" {
		t.Errorf("session variable param lost: %v", cfg.Params)
	}

	cfg, err = ParseURL("mysql://root@localhost/")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Addr != "localhost:3306" || cfg.User != "root" || cfg.Passwd != "" || cfg.DBName != "" {
		t.Errorf("defaults: addr %q user %q pass %q db %q", cfg.Addr, cfg.User, cfg.Passwd, cfg.DBName)
	}
	cfg, err = ParseURL("mysql://[::1]:4000/x")
	if err != nil || cfg.Addr != "[::1]:4000" {
		t.Errorf("IPv6: %v %v", cfg, err)
	}

	for _, c := range []struct{ in, want string }{
		{"postgres://u@h/db", "scheme"},
		{"mysql:///db", "missing host"},
		{"mysql://u:p@:3306/db", "missing host"},
		{"mysql://h:notaport/db", "invalid"},
		{"mysql://h:70000/db", "bad port"},
		{"mysql://h:0/db", "bad port"},
		{"mysql://h:/db", "empty port"},
		{"mysql://h/db/extra", "contains '/'"},
		{"mysql://h/db?timeout=banana", "invalid URL"},
		{"mysql:opaque", "want mysql://host"},
		{"::", "invalid URL"},
	} {
		_, err := ParseURL(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseURL(%q) = %v, want an error containing %q", c.in, err, c.want)
		}
	}
	// The password never shows in errors.
	if _, err := ParseURL("pg://u:topsecret@h/db"); err == nil || strings.Contains(err.Error(), "topsecret") {
		t.Errorf("error leaks the password: %v", err)
	}
}

func TestNameValidatedFirst(t *testing.T) {
	for _, name := range []string{"", "Bad", "1abc", "a b", "a'b", strings.Repeat("a", resource.MaxNameLen+1)} {
		if _, err := New(name, nil, Config{}); !errors.Is(err, resource.ErrInvalidName) {
			t.Errorf("New(%q, nil) = %v, want ErrInvalidName", name, err)
		}
		// Open never dials: a bad name fails before the DSN is even parsed.
		if _, err := Open(name, "not a dsn", Config{}); !errors.Is(err, resource.ErrInvalidName) {
			t.Errorf("Open(%q) = %v, want ErrInvalidName", name, err)
		}
	}
	// One prefix: the name's error as resource.ValidateName gives it.
	const msg = `threepc: invalid resource name "Bad": want lowercase letters, digits, '_' or '-', starting with a letter`
	if _, err := Open("Bad", "mysql://u@127.0.0.1:1/db", Config{}); err == nil || err.Error() != msg {
		t.Errorf("Open(\"Bad\") = %v, want %q", err, msg)
	}
	if _, err := New("ok", nil, Config{}); err == nil {
		t.Error("New with a nil db succeeded")
	}
	other := sql.OpenDB(fakeConnector{})
	defer other.Close()
	if _, err := New("ok", other, Config{}); err == nil || !strings.Contains(err.Error(), "go-sql-driver") {
		t.Errorf("New with a foreign driver: %v", err)
	}
	if _, err := Open("ok", "mysql://h:99999/db", Config{}); err == nil {
		t.Error("Open with a bad URL succeeded")
	}
	if _, err := Open("ok", "user@tcp(127.0.0.1:1/db", Config{}); err == nil {
		t.Error("Open with a bad DSN succeeded")
	}
	r, err := Open("ok", "mysql://u@127.0.0.1:1/db", Config{})
	if err != nil {
		t.Fatal(err)
	}
	if r.cfg.Address != "127.0.0.1:1" || r.Name() != "ok" || r.System() != "mysql" {
		t.Errorf("address %q name %q system %q", r.cfg.Address, r.Name(), r.System())
	}
	if err := r.Close(); err != nil {
		t.Error(err)
	}
}

func TestXIDLiteral(t *testing.T) {
	x := resource.XID{GTID: "01ARZ3NDEKTSV4RRFFQ69G5FAV", Primary: "pg-main", Branch: "my_shop", Space: resource.SpaceTag(""), Session: 1234}
	tag := resource.DatabaseTag("shop")
	got := xidLiteral(x, tag)
	want := fmt.Sprintf("X'%x',X'%x',%d", "3pc2:01ARZ3NDEKTSV4RRFFQ69G5FAV:pg-main", "my_shop:"+x.Space+":"+tag+":16i", resource.MySQLFormatID)
	if got != want {
		t.Errorf("xidLiteral = %s, want %s", got, want)
	}
}

func TestErrorClasses(t *testing.T) {
	my := func(n uint16) error { return fmt.Errorf("ctx: %w", &mysqldriver.MySQLError{Number: n}) }
	for _, err := range []error{io.EOF, mysqldriver.ErrInvalidConn, &net.OpError{Op: "dial", Err: errors.New("refused")}, my(2006), my(2013), my(1927), my(1053)} {
		if !isConnError(err) {
			t.Errorf("isConnError(%v) = false", err)
		}
		if w := wrapConn("x", err); !errors.Is(w, resource.ErrUnreachable) || !errors.Is(w, err) {
			t.Errorf("wrapConn(%v) = %v", err, w)
		}
	}
	for _, err := range []error{my(1062), my(1397), errors.New("other"), nil} {
		if isConnError(err) {
			t.Errorf("isConnError(%v) = true", err)
		}
	}
	for _, n := range []uint16{1402, 1613, 1614} {
		if !isRollbackOnly(my(n)) {
			t.Errorf("isRollbackOnly(%d) = false", n)
		}
	}
	if isRollbackOnly(my(1397)) {
		t.Error("1397 is not rollback-only")
	}
}

// The driver's errors carry the MySQL error number as tracing's
// db.response.status_code, and tracing still names the server's error as
// their error.type.
func TestErrorStatusCode(t *testing.T) {
	server := &mysqldriver.MySQLError{Number: 1062, Message: "Duplicate entry"}
	for _, err := range []error{
		wrap("insert", resource.ErrMarkerExists, server),
		wrap("insert", nil, fmt.Errorf("ctx: %w", server)),
		wrapConn("x", &mysqldriver.MySQLError{Number: 1062}),
		fmt.Errorf("outer: %w", wrap("inner", nil, wrap("innermost", nil, server))),
		heuristic("commit", false, server),
	} {
		var sc resource.StatusCoder
		if !errors.As(err, &sc) {
			t.Errorf("%v: no resource.StatusCoder in the chain", err)
			continue
		}
		if got := sc.DBStatusCode(); got != "1062" {
			t.Errorf("%v: DBStatusCode() = %q, want \"1062\"", err, got)
		}
		if got := telemetry.StatusCodeOf(err); got != "1062" {
			t.Errorf("%v: telemetry.StatusCodeOf = %q, want \"1062\"", err, got)
		}
		var me *mysqldriver.MySQLError
		if !errors.As(err, &me) || me.Number != 1062 {
			t.Errorf("%v: the *mysql.MySQLError is not in the chain any more", err)
		}
	}
	// No sentinel: error.type is the server's error type, as before the
	// status code was added.
	if got, want := telemetry.ErrorTypeOf(wrap("x", nil, server)), "*mysql.MySQLError"; got != want {
		t.Errorf("ErrorTypeOf = %q, want %q", got, want)
	}
	// The message is unchanged.
	if got, want := wrap("insert", nil, server).Error(), "threepc/mysql: insert: "+server.Error(); got != want {
		t.Errorf("message %q, want %q", got, want)
	}
	// Errors without a server answer carry no status code.
	for _, err := range []error{wrapConn("x", io.EOF), wrap("x", nil, errors.New("other")), heuristic("commit", true, nil)} {
		if got := telemetry.StatusCodeOf(err); got != "" {
			t.Errorf("%v: status code %q, want none", err, got)
		}
	}
}

func TestTakeParams(t *testing.T) {
	dc, err := ParseURL("mysql://u@127.0.0.1/db?threepc_read_only_vote=true&wait_timeout=10")
	if err != nil {
		t.Fatal(err)
	}
	var cfg Config
	if err := takeParams(dc, &cfg); err != nil {
		t.Fatal(err)
	}
	if !cfg.ReadOnlyVote {
		t.Errorf("cfg = %+v, want ReadOnlyVote", cfg)
	}
	if _, ok := dc.Params[ParamReadOnlyVote]; ok {
		t.Errorf("%s still passed to the server as a session variable", ParamReadOnlyVote)
	}
	if dc.Params["wait_timeout"] != "10" {
		t.Errorf("other parameters lost: %v", dc.Params)
	}
	// false turns it off again (a URL can override a Config that set it),
	// and leaving it out keeps the Config's choice.
	dc, _ = ParseURL("mysql://u@127.0.0.1/db?threepc_read_only_vote=false")
	if err := takeParams(dc, &cfg); err != nil || cfg.ReadOnlyVote {
		t.Errorf("threepc_read_only_vote=false: cfg = %+v, %v; want the vote off", cfg, err)
	}
	dc, _ = ParseURL("mysql://u@127.0.0.1/db")
	if err := takeParams(dc, &cfg); err != nil || cfg.ReadOnlyVote {
		t.Errorf("no parameter: cfg = %+v, %v; want the vote off (the default)", cfg, err)
	}
	dc, _ = ParseURL("mysql://u@127.0.0.1/db?threepc_read_only_vote=maybe")
	if err := takeParams(dc, &cfg); err == nil {
		t.Error("threepc_read_only_vote=maybe: no error")
	}
	// The detached mode is gone: its parameter is refused, not sent to
	// the server.
	dc, _ = ParseURL("mysql://u@127.0.0.1/db?threepc_keep_attached=true")
	if err := takeParams(dc, &cfg); err == nil || !strings.Contains(err.Error(), "removed") {
		t.Errorf("threepc_keep_attached: %v, want an error saying it was removed", err)
	}
	// Open wants a database: the marker table lives there.
	if _, err := Open("ok", "mysql://u@127.0.0.1:1/", Config{}); err == nil || !strings.Contains(err.Error(), "database") {
		t.Errorf("Open without a database: %v", err)
	}
}

func TestMarkerSQL(t *testing.T) {
	x := resource.XID{GTID: "01ARZ3NDEKTSV4RRFFQ69G5FAV", Primary: "pg", Branch: "shop", Space: resource.SpaceTag("")}
	got := evidenceSQL(x)
	want := fmt.Sprintf("INSERT INTO threepc_markers (gtid, branch, state, primary_name, participants, owner, space) VALUES (X'%x', X'%x', 'evidence', X'%x', '', '', X'%x')", x.GTID, x.Branch, x.Primary, x.Space)
	if got != want {
		t.Errorf("evidenceSQL =\n%s\nwant\n%s", got, want)
	}
	m := resource.Marker{GTID: x.GTID, State: resource.StatePreCommit, Primary: "pg", Participants: []string{"pg", "shop"}, Owner: ""}
	got = insertMarkerSQL(m)
	want = fmt.Sprintf("INSERT INTO threepc_markers (gtid, branch, state, primary_name, participants, owner, space) VALUES (X'%x', '', X'%x', X'%x', X'%x', '', '')", m.GTID, "precommit", "pg", "pg,shop")
	if got != want {
		t.Errorf("insertMarkerSQL =\n%s\nwant\n%s", got, want)
	}
}
