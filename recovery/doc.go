// Package recovery finishes distributed transactions whose coordinator
// is gone: the termination protocol of threepc.
//
// A Scanner reads every resource's marker rows and prepared branches and,
// per global transaction of its namespace, commits (a precommit row exists
// anywhere), rolls back (an abort row at the primary), fences and rolls
// back (no row: an abort row is inserted at the primary first, as a
// compare-and-set), or leaves it in doubt (the primary cannot be
// reached). The in-flight horizon (WithHorizon) applies to every
// transaction, not only to fencing: one younger than it is left alone
// whatever its rows say, even one that could be committed, since its
// coordinator may still be running it. A transaction counts as committed
// only on evidence: each branch's own evidence row, read from another
// session.
// Once every branch is proven committed the primary's decision row
// becomes a tombstone, kept for the retention period like abort rows. A
// branch that contradicts the decision is a heuristic outcome: reported,
// never papered over. The scanner is idempotent and safe to run
// concurrently with other scanners and with live coordinators on other
// instances.
//
// Run a scan at start-up, before serving traffic, and keep one running
// in the background (Run's third argument, if not nil, receives every
// scan's report):
//
//	sc, err := recovery.New(resources, recovery.WithNamespace("shop"))
//	if err != nil { ... }
//	if _, err := sc.ScanOnce(ctx); err != nil { ... }
//	go sc.Run(ctx, time.Minute, nil) // until ctx ends
package recovery
