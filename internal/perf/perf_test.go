// Package perf holds Go benchmarks of the coordinator's commit path on
// real PostgreSQL and MariaDB servers (from package harness, or
// THREEPC_TEST_POSTGRES / THREEPC_TEST_MYSQL), for profiling:
//
//	go test ./internal/perf -run '^$' -bench . -benchtime 3s -cpuprofile cpu.out -memprofile mem.out
//
// The side-by-side comparison with hand-written 2PC is `threepc bench`;
// these benchmarks isolate the library's own cost per variant.
package perf

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/threepc/threepc/drivers/mysql"
	"github.com/threepc/threepc/drivers/postgres"
	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/migrations"
	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

const accounts = 1000

type pair struct {
	pg, maria     *harness.Server
	pgDB, mariaDB string
}

var (
	setupOnce sync.Once
	servers   pair
)

func setup(b *testing.B) pair {
	b.Helper()
	setupOnce.Do(func() {
		servers.pg = harness.Shared(b, harness.Postgres)
		servers.maria = harness.Shared(b, harness.MariaDB)
		servers.pgDB = servers.pg.NewDatabase(b)
		servers.mariaDB = servers.maria.NewDatabase(b)
		ctx := context.Background()
		pg, err := postgres.Open("pg", servers.pg.DSN(servers.pgDB), postgres.Config{})
		if err != nil {
			b.Fatal(err)
		}
		defer pg.Close()
		maria, err := mysql.Open("maria", servers.maria.DSN(servers.mariaDB), mysql.Config{})
		if err != nil {
			b.Fatal(err)
		}
		defer maria.Close()
		for _, r := range []resource.Resource{pg, maria} {
			d := migrations.DialectPostgres
			if r == resource.Resource(maria) {
				d = migrations.DialectMySQL
			}
			if err := migrations.Up(ctx, resource.DBOf(r), d); err != nil {
				b.Fatal(err)
			}
			if _, err := resource.DBOf(r).ExecContext(ctx, "CREATE TABLE perf_accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL)"); err != nil {
				b.Fatal(err)
			}
			fill := fmt.Sprintf("INSERT INTO perf_accounts SELECT n, 1000 FROM generate_series(1, %d) AS n", accounts)
			if d == migrations.DialectMySQL {
				fill = fmt.Sprintf("INSERT INTO perf_accounts SELECT seq, 1000 FROM seq_1_to_%d", accounts)
			}
			if _, err := resource.DBOf(r).ExecContext(ctx, fill); err != nil {
				b.Fatal(err)
			}
		}
	})
	if servers.pg == nil {
		b.Fatal("setup failed")
	}
	return servers
}

type variant struct {
	name  string
	opts  []txmanager.Option
	maria mysql.Config
}

// readOnlyVote is the MariaDB driver's opt-in read-only detection, to
// profile what its two status queries per branch cost.
var readOnlyVote = mysql.Config{ReadOnlyVote: true}

// plain switches off the optimizations that are on by default.
var plain = []txmanager.Option{txmanager.WithLastResource(false), txmanager.WithBatching(false), txmanager.WithAsyncCleanup(false)}

var variants = []variant{
	// The defaults: logging last resource, batched marker rows,
	// asynchronous clean-up.
	{"2pc", []txmanager.Option{txmanager.WithProtocol(txmanager.TwoPC)}, mysql.Config{}},
	{"3pc", []txmanager.Option{txmanager.WithProtocol(txmanager.ThreePC)}, mysql.Config{}},
	{"3pc+ro", []txmanager.Option{txmanager.WithProtocol(txmanager.ThreePC)}, readOnlyVote},
	{"2pc-plain", append([]txmanager.Option{txmanager.WithProtocol(txmanager.TwoPC)}, plain...), mysql.Config{}},
	{"3pc-plain", append([]txmanager.Option{txmanager.WithProtocol(txmanager.ThreePC)}, plain...), mysql.Config{}},
}

func BenchmarkTransfer(b *testing.B) {
	for _, v := range variants {
		for _, c := range []int{1, 16} {
			b.Run(fmt.Sprintf("%s/c=%d", v.name, c), func(b *testing.B) { benchTransfer(b, v, c) })
		}
	}
}

func benchTransfer(b *testing.B, v variant, conc int) {
	s := setup(b)
	pg, err := postgres.Open("pg", s.pg.DSN(s.pgDB), postgres.Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer pg.Close()
	maria, err := mysql.Open("maria", s.maria.DSN(s.mariaDB), v.maria)
	if err != nil {
		b.Fatal(err)
	}
	defer maria.Close()
	for _, r := range []resource.Resource{pg, maria} {
		resource.DBOf(r).SetMaxOpenConns(2*conc + 4)
		resource.DBOf(r).SetMaxIdleConns(2*conc + 4)
	}
	opts := append([]txmanager.Option{txmanager.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))}, v.opts...)
	m, err := txmanager.New([]resource.Resource{pg, maria}, opts...)
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close(context.Background()) // flushes asynchronous clean-up
	names := []string{"pg", "maria"}
	transfer := func(ctx context.Context, rng *rand.Rand) error {
		i := rng.IntN(2)
		from, to := names[i], names[1-i]
		amt := 1 + rng.Int64N(100)
		return m.Run(ctx, func(ctx context.Context, tx *txmanager.Tx) error {
			if _, err := tx.DB(from).ExecContext(ctx, upd(from), -amt, 1+rng.IntN(accounts)); err != nil {
				return err
			}
			_, err := tx.DB(to).ExecContext(ctx, upd(to), amt, 1+rng.IntN(accounts))
			return err
		})
	}
	ctx := context.Background()
	var (
		mu   sync.Mutex
		lats []time.Duration
	)
	b.ReportAllocs()
	b.ResetTimer()
	if conc == 1 {
		rng := rand.New(rand.NewPCG(1, 2))
		for b.Loop() {
			t0 := time.Now()
			if err := transfer(ctx, rng); err != nil {
				b.Fatal(err)
			}
			lats = append(lats, time.Since(t0))
		}
	} else {
		b.SetParallelism(max(1, conc/max(1, runtimeProcs())))
		var seed uint64
		b.RunParallel(func(p *testing.PB) {
			mu.Lock()
			seed++
			rng := rand.New(rand.NewPCG(seed, 7))
			mu.Unlock()
			var mine []time.Duration
			for p.Next() {
				t0 := time.Now()
				if err := transfer(ctx, rng); err != nil {
					b.Error(err)
					return
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lats = append(lats, mine...)
			mu.Unlock()
		})
	}
	b.StopTimer()
	slices.Sort(lats)
	if n := len(lats); n > 0 {
		b.ReportMetric(float64(lats[n/2].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(lats[n*99/100].Microseconds())/1000, "p99-ms")
	}
}

func upd(name string) string {
	if name == "pg" {
		return "UPDATE perf_accounts SET balance = balance + $1 WHERE id = $2"
	}
	return "UPDATE perf_accounts SET balance = balance + ? WHERE id = ?"
}
