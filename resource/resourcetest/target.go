// Package resourcetest is the conformance suite every threepc driver must
// pass, run against real database servers (see package harness), and
// helpers for drivers' own tests. The in-memory databases the protocol's
// model tests use live in internal/memres.
package resourcetest

import (
	"testing"

	"github.com/threepc/threepc/resource"
)

// Target describes the driver under test to Run and to the exported
// subtests.
type Target struct {
	// New returns a new resource with the given name on a database of its
	// own (so Recover and ListMarkers see only what the test made), with the
	// marker table migrated. The suite closes it; the target cleans up the
	// database in t.Cleanup if it wants to.
	New func(t *testing.T, name string) resource.Resource

	// NewOnDatabaseOf returns a second resource with another name on the
	// same database as r (another pool), as a second application instance
	// would have.
	NewOnDatabaseOf func(t *testing.T, r resource.Resource, name string) resource.Resource

	// Kill stops the server with SIGKILL; Restart starts it again on the
	// same data directory and waits until it accepts connections. A nil
	// Kill skips the crash subtest (TestSurvivesServerCrash) and nothing
	// else, so that a server the target cannot kill (an external one)
	// runs all the rest; with Kill set, Restart is required.
	Kill    func(t *testing.T)
	Restart func(t *testing.T)

	// PrepareForeign leaves a prepared transaction that threepc did not
	// write on the database of r (raw PREPARE TRANSACTION / XA with another
	// id format) and returns a function that finishes it.
	PrepareForeign func(t *testing.T, r resource.Resource) (finish func())

	// RollbackOutside rolls back the prepared branch xid (as Branch.XID
	// returned it) behind the driver's back, as an operator would: a raw
	// ROLLBACK PREPARED or XA ROLLBACK by id through a plain connection to
	// r's database, after ending the session that holds the branch if the
	// server needs that (MariaDB keeps a prepared XA attached). It must not
	// use the driver's own finishing code, and must leave no evidence.
	RollbackOutside func(t *testing.T, r resource.Resource, xid resource.XID)
}
