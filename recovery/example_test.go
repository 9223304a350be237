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
