package recovery_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	"github.com/threepc/threepc/drivers"
	"github.com/threepc/threepc/drivers/mysql"
	"github.com/threepc/threepc/drivers/postgres"
	"github.com/threepc/threepc/recovery"
	"github.com/threepc/threepc/resource"
)

// Needs servers, so no Output comment: TestExamplesRun runs it.

// Recovery at start-up and in the background, over the same resources (by
// name) and namespace as the application's coordinator.
func Example() {
	orders, err := postgres.Open("orders", os.Getenv("ORDERS_URL"), postgres.Config{}) // postgres://app@127.0.0.1:5432/orders
	if err != nil {
		log.Fatal(err)
	}
	defer orders.Close()
	billing, err := mysql.Open("billing", os.Getenv("BILLING_URL"), mysql.Config{}) // mysql://app:secret@127.0.0.1:3306/billing
	if err != nil {
		log.Fatal(err)
	}
	defer billing.Close()
	ctx, shutdown := context.WithCancel(context.Background())
	defer shutdown() // at return: ends the background scans, then the resources close
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
	fmt.Printf("start-up scan: %d transactions, %d in doubt\n", len(rep.Transactions), len(rep.InDoubt()))
	// Then keep scanning every minute (backing off while something is in
	// doubt), until ctx ends.
	go func() { _ = sc.Run(ctx, time.Minute, nil) }()
	// ... serve until shutdown ...
}

// Needs servers, so no Output comment: TestExamplesRun runs it.

// A scan at start-up, reporting what it could not finish. The resources
// come from configuration, the driver chosen by each URL's scheme.
func ExampleScanner_ScanOnce() {
	ctx := context.Background()
	var resources []resource.Resource
	for _, name := range []string{"orders", "billing"} {
		r, err := drivers.Open(name, os.Getenv(strings.ToUpper(name)+"_URL")) // ORDERS_URL=postgres://..., BILLING_URL=mysql://...
		if err != nil {
			log.Fatal(err)
		}
		defer resource.Close(r)
		resources = append(resources, r)
	}
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
	fmt.Printf("%d resources scanned, %d transactions in doubt\n", len(resources)-len(rep.Unreachable), len(rep.InDoubt()))
}

// Needs servers, so no Output comment: TestExamplesRun runs it.

// Scanning in the background until shutdown, with every report passed to
// a callback (for metrics or an admin page).
func ExampleScanner_Run() {
	ctx, stop := context.WithCancel(context.Background())
	var resources []resource.Resource
	for _, name := range []string{"orders", "billing"} {
		r, err := drivers.Open(name, os.Getenv(strings.ToUpper(name)+"_URL")) // ORDERS_URL=postgres://..., BILLING_URL=mysql://...
		if err != nil {
			log.Fatal(err)
		}
		defer resource.Close(r)
		resources = append(resources, r)
	}
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
	fmt.Println("background scans ended:", <-done)
}
