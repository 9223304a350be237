// Command benchservers starts a throwaway PostgreSQL and MariaDB pair for
// `threepc bench`, sized for 64 concurrent transfers, prints their URLs
// and keeps them running until interrupted.
//
//	go run ./scripts/benchservers
//	threepc bench --db pg=$PG --db maria=$MARIA ...
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/threepc/threepc/harness"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	pg, err := harness.Start(ctx, harness.Postgres, harness.Options{Settings: map[string]string{
		"max_connections": "300", "max_prepared_transactions": "200",
	}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer pg.Close()
	maria, err := harness.Start(ctx, harness.MariaDB, harness.Options{Settings: map[string]string{
		"max_connections": "300",
	}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer maria.Close()
	for _, s := range []*harness.Server{pg, maria} {
		if err := s.CreateDatabase(ctx, "bench"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	cancel()
	fmt.Printf("PG=%s\nMARIA=%s\n", pg.URL("bench"), maria.URL("bench"))
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	<-sig
}
