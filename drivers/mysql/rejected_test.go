package mysql

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/resource"
)

// TestConnectionRejected: a server that answers and turns the connection
// down (wrong password, no access to the database, unknown database, a
// URL parameter the server does not know) is ErrConnectionRejected with
// the server's message, from Check and from Begin, and never
// ErrUnreachable: code retrying on that would retry forever.
func TestConnectionRejected(t *testing.T) {
	srv := harness.Shared(t, harness.MariaDB)
	name := srv.NewDatabase(t)
	ctx := testCtx(t)

	// A user that exists but may not use the database: 1044.
	_, admin, _ := newDB(t, false)
	user := fmt.Sprintf("nogrant%d", nameSeq.Add(1))
	if _, err := admin.ExecContext(ctx, "CREATE USER '"+user+"'@'%' IDENTIFIED BY 'pw'"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = admin.ExecContext(ctx, "DROP USER '"+user+"'@'%'") })

	base, err := url.Parse(srv.URL(name))
	if err != nil {
		t.Fatal(err)
	}
	withUser := func(u *url.Userinfo) string { c := *base; c.User = u; return c.String() }
	withPath := func(db string) string { c := *base; c.Path = "/" + db; return c.String() }
	cases := []struct {
		name, url string
		errno     uint16
		msg       string // from the server's message
	}{
		{"wrong password", withUser(url.UserPassword(base.User.Username(), "wrong-password")), 1045, "Access denied for user"},
		{"no access to the database", withUser(url.UserPassword(user, "pw")), 1044, "Access denied for user '" + user + "'"},
		{"unknown database", withPath("no_such_db_" + name), 1049, "Unknown database"},
		{"unknown URL parameter", srv.URL(name) + "?foo=bar", 1193, "Unknown system variable 'foo'"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, err := Open("shop", c.url, Config{})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			wantRejected := func(what string, err error) {
				t.Helper()
				if !errors.Is(err, resource.ErrConnectionRejected) || errors.Is(err, resource.ErrUnreachable) || resource.IsConnectionError(err) {
					t.Errorf("%s = %v, want ErrConnectionRejected and not ErrUnreachable", what, err)
				}
				if err != nil && !strings.Contains(err.Error(), c.msg) {
					t.Errorf("%s = %v, want the server's message %q", what, err, c.msg)
				}
				if err != nil && strings.Contains(err.Error(), "wrong-password") {
					t.Errorf("%s leaks the password: %v", what, err)
				}
				wantErrno(t, err, c.errno)
			}
			err = r.Check(ctx)
			t.Logf("Check: %v", err)
			wantRejected("Check", err)
			_, err = r.Begin(ctx, resource.XID{GTID: newGTID(), Primary: "shop", Branch: "shop", Space: resource.SpaceTag("")})
			wantRejected("Begin", err)
		})
	}
}
