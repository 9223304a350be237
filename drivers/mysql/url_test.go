package mysql

import (
	"strings"
	"testing"

	"github.com/threepc/threepc/harness"
)

// TestOpenMariaDBURL: mysql.Open takes mariadb:// URLs, as drivers.Open
// and the command do.
func TestOpenMariaDBURL(t *testing.T) {
	srv := harness.Shared(t, harness.MariaDB)
	name := srv.NewDatabase(t)
	u := "mariadb" + strings.TrimPrefix(srv.URL(name), "mysql")
	r, err := Open("shop", u, Config{})
	if err != nil {
		t.Fatalf("Open(%q): %v", u, err)
	}
	defer r.Close()
	if r.DatabaseName() != name {
		t.Errorf("DatabaseName = %q, want %q", r.DatabaseName(), name)
	}
	if err := r.DB().PingContext(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}

func TestParseMariaDBURL(t *testing.T) {
	for _, in := range []string{"mariadb://app:pw@127.0.0.1:3307/shop?timeout=5s", "MariaDB://app:pw@127.0.0.1:3307/shop?timeout=5s"} {
		cfg, err := ParseURL(in)
		if err != nil {
			t.Fatalf("ParseURL(%q): %v", in, err)
		}
		if cfg.User != "app" || cfg.Passwd != "pw" || cfg.Addr != "127.0.0.1:3307" || cfg.DBName != "shop" || cfg.Timeout.String() != "5s" {
			t.Errorf("ParseURL(%q) = user %q pass %q addr %q db %q timeout %v", in, cfg.User, cfg.Passwd, cfg.Addr, cfg.DBName, cfg.Timeout)
		}
	}
	if _, err := ParseURL("maria://h/db"); err == nil || !strings.Contains(err.Error(), "want mysql:// or mariadb://") {
		t.Errorf("ParseURL(maria://) = %v", err)
	}
	// A DSN that is no URL is still parsed as a go-sql-driver DSN.
	if _, err := Open("shop", "mariadb:/x", Config{}); err == nil || !strings.Contains(err.Error(), "invalid DSN") {
		t.Errorf("Open(mariadb:/x) = %v, want invalid DSN", err)
	}
}
