package harness

import (
	"context"
	"strings"
	"testing"
)

// TestOwn: Own starts a server for the test alone (not the shared one),
// which the test may kill and restart, and closes it at the end; with the
// kind's environment variable set it skips, saying why, and touches
// nothing; the other kind is unaffected.
func TestOwn(t *testing.T) {
	for _, kind := range []Kind{Postgres, MariaDB} {
		t.Run(string(kind), func(t *testing.T) {
			env, other := EnvMySQL, EnvPostgres
			if kind == Postgres {
				env, other = EnvPostgres, EnvMySQL
			}
			t.Setenv(env, "")
			t.Setenv(other, "mysql://root@127.0.0.1:1/x") // another kind's: irrelevant here
			var s *Server
			t.Run("own", func(t *testing.T) {
				s = Own(t, kind, Options{})
				if s.External() || s == shared[kind].s {
					t.Fatal("Own returned an external or the shared server")
				}
				ctx := context.Background()
				if err := s.Kill(); err != nil {
					t.Fatal(err)
				}
				if err := s.Restart(ctx); err != nil {
					t.Fatal(err)
				}
				open(t, s, "").Close()
			})
			if s != nil && s.Running() {
				t.Fatal("Own's server still runs after its test ended")
			}

			t.Setenv(env, "postgres://nobody@127.0.0.1:1/x")
			var tb fakeTB
			if got := Own(&tb, kind, Options{}); got != nil || tb.fatal != "" {
				t.Fatalf("Own with %s set: %v, fatal %q; want a skip", env, got, tb.fatal)
			}
			for _, want := range []string{"needs a " + string(kind) + " server of its own", env + " names an external server", "cannot kill or restart", "unset " + env} {
				if !strings.Contains(tb.skip, want) {
					t.Errorf("skip reason %q lacks %q", tb.skip, want)
				}
			}
		})
	}
}
