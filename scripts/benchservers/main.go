// Command benchservers starts a throwaway PostgreSQL and MariaDB pair for
// `threepc bench`, sized for 64 concurrent transfers, with four databases
// on each; it prints their URLs and keeps them running until interrupted.
//
//	go run ./scripts/benchservers
//	threepc bench --db pg=$PG --db maria=$MARIA ...
//	threepc bench $DBS --participants 2,3,5,8 ...
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/threepc/threepc/harness"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	pg, err := harness.Start(ctx, harness.Postgres, harness.Options{Settings: map[string]string{
		"max_connections": "600", "max_prepared_transactions": "600",
	}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer pg.Close()
	maria, err := harness.Start(ctx, harness.MariaDB, harness.Options{Settings: map[string]string{
		"max_connections": "600",
	}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer maria.Close()
	// Four databases per server, for transfers that touch up to eight
	// (threepc bench --participants 2,3,5,8).
	var dbs []string
	for i := 1; i <= 4; i++ {
		db := "bench"
		if i > 1 {
			db = fmt.Sprintf("bench%d", i)
		}
		for _, s := range []*harness.Server{pg, maria} {
			if err := s.CreateDatabase(ctx, db); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
		}
		suffix := ""
		if i > 1 {
			suffix = fmt.Sprint(i)
		}
		dbs = append(dbs, fmt.Sprintf("--db pg%s=%s", suffix, pg.URL(db)), fmt.Sprintf("--db maria%s=%s", suffix, maria.URL(db)))
	}
	cancel()
	fmt.Printf("PG=%s\nMARIA=%s\nDBS='%s'\n", pg.URL("bench"), maria.URL("bench"), strings.Join(dbs, " "))
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	<-sig
}
