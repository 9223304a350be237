package recovery_test

import (
	"context"
	"log"
	"time"

	"github.com/threepc/threepc/drivers/mysql"
	"github.com/threepc/threepc/drivers/postgres"
	"github.com/threepc/threepc/recovery"
	"github.com/threepc/threepc/resource"
)

// Recovery at start-up and in the background, over the same resources (by
// name) and namespace as the application's coordinator.
func Example() {
	ctx := context.Background()
	orders, err := postgres.Open("orders", "postgres://app@127.0.0.1:5432/orders", postgres.Config{})
	if err != nil {
		log.Fatal(err)
	}
	billing, err := mysql.Open("billing", "mysql://app:secret@127.0.0.1:3306/billing", mysql.Config{})
	if err != nil {
		log.Fatal(err)
	}
	sc, err := recovery.New([]resource.Resource{orders, billing}, recovery.WithNamespace("shop"))
	if err != nil {
		log.Fatal(err)
	}
	// Before serving traffic: finish what a crashed instance left.
	rep, err := sc.ScanOnce(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, t := range rep.Heuristic() {
		// A branch contradicts its transaction's decision: page someone.
		log.Printf("heuristic outcome %s: %s", t.GTID, t.Reason)
	}
	// Then keep scanning every minute (backing off while something is in
	// doubt), until ctx ends.
	go func() { _ = sc.Run(ctx, time.Minute, nil) }()
}

// A scan at start-up, reporting what it could not finish.
func ExampleScanner_ScanOnce() {
	ctx := context.Background()
	var resources []resource.Resource // opened with drivers/postgres and drivers/mysql
	sc, err := recovery.New(resources, recovery.WithNamespace("shop"), recovery.WithHorizon(2*time.Minute))
	if err != nil {
		log.Fatal(err)
	}
	rep, err := sc.ScanOnce(ctx)
	if err != nil {
		log.Fatal(err) // the scan could not run at all
	}
	for name, err := range rep.Unreachable {
		log.Printf("resource %s not scanned: %v", name, err)
	}
	for _, t := range rep.InDoubt() {
		log.Printf("%s (age %v): %s %s", t.GTID, t.Age, t.Action, t.Reason)
	}
}

// Scanning in the background until shutdown, with every report passed to
// a callback (for metrics or an admin page).
func ExampleScanner_Run() {
	ctx, stop := context.WithCancel(context.Background())
	var resources []resource.Resource // opened with drivers/postgres and drivers/mysql
	sc, err := recovery.New(resources)
	if err != nil {
		log.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- sc.Run(ctx, time.Minute, func(rep *recovery.Report) {
			if n := len(rep.InDoubt()); n > 0 {
				log.Printf("%d transactions in doubt, oldest %v", n, rep.OldestInDoubt())
			}
		})
	}()
	// ... serve until shutdown ...
	stop()
	<-done // context.Canceled
}
