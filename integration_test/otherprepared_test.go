package integration_test

import (
	"context"
	"database/sql"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/recovery"
	tt "github.com/threepc/threepc/tracing/tracingtest"
)

// TestOtherPreparedReported: prepared transactions of other software on
// the servers are left alone by a scan, and counted in its report and in
// the threepc.prepared.other.* gauges, with PostgreSQL's age.
func TestOtherPreparedReported(t *testing.T) {
	ps := []part{
		newPart(t, harness.Own(t, harness.Postgres, harness.Options{}), "pg", crashTable),
		newPart(t, harness.Own(t, harness.MariaDB, harness.Options{}), "my", crashTable),
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel) // after the clean-ups below, which use ctx
	foreign := func(p part, stmts ...string) {
		drv := "pgx"
		if p.name == "my" {
			drv = "mysql"
		}
		db, err := sql.Open(drv, p.srv.DSN(p.db))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		conn, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		for _, q := range stmts {
			if _, err := conn.ExecContext(ctx, q); err != nil {
				t.Fatalf("%s: %s: %v", p.name, q, err)
			}
		}
	}
	foreign(ps[0], "BEGIN", "INSERT INTO crash_rows (k) VALUES ('other-app')", "PREPARE TRANSACTION 'other-app-1'")
	t.Cleanup(func() { foreign(ps[0], "ROLLBACK PREPARED 'other-app-1'") })
	foreign(ps[1], "XA START 'other-app-1'", "INSERT INTO crash_rows (k) VALUES ('other-app')", "XA END 'other-app-1'", "XA PREPARE 'other-app-1'")
	t.Cleanup(func() { foreign(ps[1], "XA ROLLBACK 'other-app-1'") })
	time.Sleep(50 * time.Millisecond) // a measurable age on PostgreSQL

	mp, reader := tt.NewMeter(t)
	sc, err := recovery.New(openAll(t, ps), recovery.WithMeterProvider(mp),
		recovery.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := sc.ScanOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Transactions) != 0 {
		t.Errorf("scan handled %d transactions, want none (the prepared ones are not ours)", len(rep.Transactions))
	}
	pg, my := rep.OtherPrepared["pg"], rep.OtherPrepared["my"]
	if pg.Count != 1 || pg.Oldest < 50*time.Millisecond {
		t.Errorf("pg: %+v, want 1 transaction at least 50ms old", pg)
	}
	if my.Count != 1 || my.Oldest != 0 {
		t.Errorf("my: %+v, want 1 transaction of unknown age", my)
	}
	rm := tt.Collect(t, reader)
	if got := tt.Points(t, tt.Metric(t, rm, "threepc.prepared.other.transactions")); got["threepc.resource=pg"] != 1 || got["threepc.resource=my"] != 1 {
		t.Errorf("threepc.prepared.other.transactions = %v, want 1 on each", got)
	}
	if got := tt.FloatPoints(t, tt.Metric(t, rm, "threepc.prepared.other.oldest_age")); got["threepc.resource=pg"] < 0.05 {
		t.Errorf("threepc.prepared.other.oldest_age = %v, want pg >= 0.05 s", got)
	}
	// The clean-ups roll both back, and fail the test if either is gone:
	// recovery never acts on them.
}
