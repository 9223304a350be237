package main

import (
	"strings"
	"testing"
)

// TestErrorMessages: each bad setup gets one line that says what
// happened, once: no doubled "threepc: " prefix, one hint, and a server
// that turns the connection down is not reported as unreachable.
func TestErrorMessages(t *testing.T) {
	d := newDBs(t)
	wrongPw := strings.Replace(d.myURL(), "root@", "root:wrong-password@", 1)
	cases := []struct {
		name string
		args []string
		msg  []string // all in the line
		not  []string // none in the line
	}{
		{"bad name", []string{"migrate", "--db", "Bad Name=postgres://x@127.0.0.1/x"},
			[]string{`threepc: --db: invalid resource name "Bad Name": want lowercase letters`}, nil},
		{"missing table pg", []string{"recover", "--db", "pg=" + d.pgURL()},
			[]string{"marker table missing", "`threepc migrate`"}, []string{"(run: threepc migrate"}},
		{"missing table maria", []string{"recover", "--db", "maria=" + d.myURL()},
			[]string{"marker table missing", "`threepc migrate`"}, []string{"(run: threepc migrate"}},
		{"wrong password", []string{"migrate", "--db", "maria=" + wrongPw},
			[]string{`threepc: database "maria": threepc/mysql: connecting to`, "the server rejected the connection: Error 1045", "Access denied for user 'root'"},
			[]string{"unreachable", "cannot reach", "wrong-password"}},
		{"unknown parameter", []string{"migrate", "--db", "maria=" + d.myURL() + "?foo=bar"},
			[]string{"the server rejected the connection: Error 1193", "Unknown system variable 'foo'"}, []string{"unreachable"}},
		{"no such role", []string{"migrate", "--db", "pg=" + strings.Replace(d.pgURL(), "postgres@", "nobody@", 1)},
			[]string{"the server rejected the connection", `role "nobody" does not exist (SQLSTATE 28000)`}, []string{"unreachable"}},
		{"no such database", []string{"migrate", "--db", "pg=" + strings.Replace(d.pgURL(), "/"+d.pgDB, "/no_such_db", 1)},
			[]string{"the server rejected the connection", `database "no_such_db" does not exist (SQLSTATE 3D000)`}, []string{"unreachable"}},
		{"mariadb scheme", []string{"migrate", "--db", "maria=" + strings.Replace(d.myURL(), "mysql://", "mariadb://", 1) + "?foo=bar"},
			[]string{"Unknown system variable 'foo'"}, []string{"invalid DSN"}},
		{"unreachable", []string{"migrate", "--db", "pg=postgres://postgres@127.0.0.1:1/x?sslmode=disable&connect_timeout=2"},
			[]string{"cannot reach the server: database unreachable", "(is the server running"}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := cli(t, c.args...)
			wantUsage(t, r, c.msg...)
			line := strings.TrimSpace(r.stderr)
			t.Log(line)
			if n := strings.Count(line, "threepc: "); n != 1 {
				t.Errorf("%d times \"threepc: \" in %q", n, line)
			}
			if n := strings.Count(line, "threepc migrate"); n > 1 {
				t.Errorf("%d hints to migrate in %q", n, line)
			}
			for _, s := range c.not {
				if strings.Contains(line, s) {
					t.Errorf("%q in %q", s, line)
				}
			}
		})
	}
}
