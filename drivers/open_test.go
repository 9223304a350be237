package drivers

import (
	"errors"
	"strings"
	"testing"

	"github.com/threepc/threepc/resource"
)

func TestOpenSelectsDriverByScheme(t *testing.T) {
	for url, system := range map[string]string{
		"postgres://u@127.0.0.1:5432/db":   "postgresql",
		"postgresql://u@127.0.0.1:5432/db": "postgresql",
	} {
		r, err := Open("a", url)
		if err != nil {
			t.Fatalf("%s: %v", url, err)
		}
		if r.System() != system {
			t.Errorf("%s: system %q, want %q", url, r.System(), system)
		}
		resource.Close(r)
	}
	for _, url := range []string{"mysql://root@127.0.0.1:3306/db", "mariadb://root@127.0.0.1:3306/db"} {
		r, err := Open("a", url)
		if err != nil {
			t.Fatalf("%s: %v", url, err)
		}
		resource.Close(r)
	}
}

func TestOpenRejectsBadInput(t *testing.T) {
	if _, err := Open("a", "sqlite://x"); !errors.Is(err, ErrUnknownScheme) {
		t.Errorf("sqlite: got %v, want ErrUnknownScheme", err)
	}
	if _, err := Open("a", "127.0.0.1:5432"); !errors.Is(err, ErrUnknownScheme) {
		t.Errorf("no scheme: got %v", err)
	}
	if _, err := Open("Bad Name", "postgres://x@127.0.0.1/db"); !errors.Is(err, resource.ErrInvalidName) {
		t.Errorf("bad name: got %v", err)
	}
	_, err := Open("a", "ftp://u:secret@127.0.0.1/x")
	if err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("error must not show the password: %v", err)
	}
}

func TestParseSpec(t *testing.T) {
	name, url, err := ParseSpec("orders=postgres://u@127.0.0.1/o?x=1")
	if err != nil || name != "orders" || url != "postgres://u@127.0.0.1/o?x=1" {
		t.Fatalf("got %q %q %v", name, url, err)
	}
	for _, bad := range []string{"", "orders", "=postgres://x", "orders=", "BAD=postgres://x"} {
		if _, _, err := ParseSpec(bad); err == nil {
			t.Errorf("ParseSpec(%q): want an error", bad)
		}
	}
	_, _, err = ParseSpec("postgres://u:secret@127.0.0.1/db")
	if err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("error must not show the password: %v", err)
	}
}

// TestTracingAttributes: the drivers tell the tracing package their server
// address and database name (db.namespace, server.address).
func TestTracingAttributes(t *testing.T) {
	for url, want := range map[string][2]string{
		"postgres://u@127.0.0.1:5433/orders":  {"127.0.0.1:5433", "orders"},
		"mysql://root@127.0.0.1:3307/billing": {"127.0.0.1:3307", "billing"},
	} {
		r, err := Open("a", url)
		if err != nil {
			t.Fatal(err)
		}
		addr, ok1 := r.(resource.ServerAddresser)
		name, ok2 := r.(resource.DatabaseNamer)
		if !ok1 || !ok2 {
			t.Fatalf("%s: %T does not implement the tracing interfaces", url, r)
		}
		if addr.ServerAddress() != want[0] || name.DatabaseName() != want[1] {
			t.Errorf("%s: got %q %q, want %q", url, addr.ServerAddress(), name.DatabaseName(), want)
		}
		resource.Close(r)
	}
}
