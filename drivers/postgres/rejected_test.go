package postgres

import (
	"context"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/resource"
)

// wantRejected checks an error of a connection the server turned down:
// ErrConnectionRejected with the server's message and SQLSTATE, and never
// ErrUnreachable, which code retries on.
func wantRejected(t *testing.T, what string, err error, code, msg string) {
	t.Helper()
	if !errors.Is(err, resource.ErrConnectionRejected) || errors.Is(err, resource.ErrUnreachable) || resource.IsConnectionError(err) {
		t.Fatalf("%s = %v, want ErrConnectionRejected and not ErrUnreachable", what, err)
	}
	if !strings.Contains(err.Error(), msg) {
		t.Errorf("%s = %v, want the server's message %q", what, err, msg)
	}
	if strings.Contains(err.Error(), "wrong-password") {
		t.Errorf("%s leaks the password: %v", what, err)
	}
	wantCode(t, err, code)
}

// TestConnectionRejected: no such role, no such database, an unknown or
// invalid run-time parameter in the URL are the server's answers, not an
// unreachable server: Check and Begin say so.
func TestConnectionRejected(t *testing.T) {
	e := newEnv(t)
	base, err := url.Parse(e.srv.DSN(e.dbn))
	if err != nil {
		t.Fatal(err)
	}
	with := func(f func(u *url.URL)) string { c := *base; f(&c); return c.String() }
	param := func(kv string) string { return with(func(u *url.URL) { u.RawQuery += "&" + kv }) }
	cases := []struct {
		name, dsn, code, msg string
	}{
		{"no such role", with(func(u *url.URL) { u.User = url.User("nobody_here") }), "28000", `role "nobody_here" does not exist`},
		{"no such database", with(func(u *url.URL) { u.Path = "/no_such_db_" + e.dbn }), "3D000", `database "no_such_db_` + e.dbn + `" does not exist`},
		{"unknown parameter", param("foo=bar"), "42704", `unrecognized configuration parameter "foo"`},
		{"invalid parameter value", param("DateStyle=bogus"), "22023", `invalid value for parameter "DateStyle"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, err := Open("alpha", c.dsn, Config{})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			err = r.Check(testCtx(t))
			t.Logf("Check: %v", err)
			wantRejected(t, "Check", err, c.code, c.msg)
			_, err = r.Begin(testCtx(t), newXID(r))
			wantRejected(t, "Begin", err, c.code, c.msg)
		})
	}
}

// TestWrongPassword: 28P01 needs a server that asks for passwords (the
// shared one trusts every local connection).
func TestWrongPassword(t *testing.T) {
	ctx := testCtx(t)
	// The server runs as its own OS user, which must read the file.
	dir, err := os.MkdirTemp("", "threepc-hba-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	hba := filepath.Join(dir, "pg_hba.conf")
	conf := "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
	if err := os.WriteFile(hba, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	srv := harness.Own(t, harness.Postgres, harness.Options{Settings: map[string]string{"hba_file": hba}})
	admin, err := Open("admin", srv.DSN(""), Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if _, err := admin.DB().ExecContext(ctx, "CREATE ROLE app LOGIN PASSWORD 'right-password'"); err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(srv.DSN(""))
	if err != nil {
		t.Fatal(err)
	}
	for pw, wantErr := range map[string]bool{"right-password": false, "wrong-password": true} {
		u.User = url.UserPassword("app", pw)
		r, err := Open("alpha", u.String(), Config{})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		err = r.DB().PingContext(ctx)
		if !wantErr {
			if err != nil {
				t.Fatalf("the right password: %v", err)
			}
			continue
		}
		err = r.Check(ctx)
		t.Logf("Check: %v", err)
		wantRejected(t, "Check", err, "28P01", `password authentication failed for user "app"`)
		_, err = r.Begin(context.WithoutCancel(ctx), newXID(r))
		wantRejected(t, "Begin", err, "28P01", `password authentication failed for user "app"`)
	}
}
