// Package examplerun runs, from a test, an Example function that needs
// database servers: such an example has no "// Output:" comment (go test
// would run it without its servers), so a test sets up what it needs and
// calls it through Check, which compares what it printed.
package examplerun

import (
	"context"
	"database/sql"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/migrations"
)

// Stdout calls example and returns what it wrote to os.Stdout. The
// example's log output (stderr) is left alone. An example that calls
// log.Fatal ends the test binary: a loud failure.
func Stdout(t testing.TB, example func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan string, 1)
	go func() {
		var b strings.Builder
		_, _ = io.Copy(&b, r)
		_ = r.Close()
		out <- b.String()
	}()
	saved := os.Stdout
	os.Stdout = w
	func() {
		defer func() {
			os.Stdout = saved
			_ = w.Close()
		}()
		example()
	}()
	return <-out
}

// Check calls example and fails t unless it printed want, compared as go
// test compares an example's output: leading and trailing space aside.
// A want that the example prints at its very end proves it ran through.
func Check(t testing.TB, example func(), want string) {
	t.Helper()
	got := Stdout(t, example)
	if strings.TrimSpace(got) != strings.TrimSpace(want) {
		t.Errorf("example printed:\n%s\nwant:\n%s", got, want)
	}
}

// Database creates a fresh database on the test binary's shared server of
// kind (harness.Shared: the test is skipped without server binaries, and
// fails under CI=true), creates threepc's marker table in it if migrate,
// runs stmts, and returns its URL and a pool on it, closed when the test
// ends. The package's TestMain must call harness.Main.
func Database(t testing.TB, kind harness.Kind, migrate bool, stmts ...string) (url string, db *sql.DB) {
	t.Helper()
	srv := harness.Shared(t, kind)
	name := srv.NewDatabase(t)
	driver, dialect := "pgx", migrations.DialectPostgres
	if kind == harness.MariaDB {
		driver, dialect = "mysql", migrations.DialectMySQL
	}
	db, err := sql.Open(driver, srv.DSN(name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if migrate {
		if err := migrations.Up(ctx, db, dialect); err != nil {
			t.Fatalf("migrations.Up: %v", err)
		}
	}
	for _, q := range stmts {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	return srv.URL(name), db
}

// QueryInt returns the integer the query q selects from db.
func QueryInt(t testing.TB, db *sql.DB, q string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := db.QueryRowContext(context.Background(), q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}
