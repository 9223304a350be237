package harness

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestListenHostOnlyLoopbackOutsideANamespace: Options.Host takes a
// loopback address, or any address with NetNS; anything else is refused
// before a server directory is made.
func TestListenHostOnlyLoopbackOutsideANamespace(t *testing.T) {
	for _, c := range []struct {
		opts    Options
		want    string
		wantErr string
	}{
		{Options{}, "127.0.0.1", ""},
		{Options{Host: "127.0.0.2"}, "127.0.0.2", ""},
		{Options{Host: "::1"}, "::1", ""},
		{Options{Host: "10.203.1.2"}, "", "not a loopback address"},
		{Options{Host: "db.example.com"}, "", "not an IP address"},
		{Options{Host: "10.203.1.2", NetNS: "threepc-no-such-namespace"}, "", "network namespace"},
	} {
		got, err := listenHost(c.opts)
		switch {
		case c.wantErr == "" && (err != nil || got != c.want):
			t.Errorf("listenHost(%+v) = %q, %v; want %q", c.opts, got, err, c.want)
		case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
			t.Errorf("listenHost(%+v) = %q, %v; want an error saying %q", c.opts, got, err, c.wantErr)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if s, err := Start(ctx, Postgres, Options{Host: "192.0.2.1"}); err == nil {
		s.Close()
		t.Errorf("Start with a non-loopback Host and no NetNS succeeded")
	}
}
