package resourcetest

import (
	"context"
	"testing"
	"time"
)

// Run is the conformance suite: every driver must pass it against a real
// server, killable and restartable (crash survival is part of
// conformance). Each subtest gets resources of its own from target.New.
// The subtests run one after another: one of them kills the server.
//
// Every subtest is also exported on its own (TestPrepareCommit,
// TestMarkers, ...; Run's subtest names without the Test prefix), for a
// driver's test that wants to run some of them, or to run them apart. With
// a nil Target.Kill (an external server) only the crash subtest,
// TestSurvivesServerCrash, is skipped.
//
// The suite uses only the resource interfaces and portable SQL on a table
// rt_items it creates in each subtest's database.
func Run(t *testing.T, target Target) {
	if target.New == nil {
		t.Fatal("resourcetest: Target.New is nil")
	}
	tests := []struct {
		name string
		f    func(*testing.T, Target)
	}{
		{"PrepareCommit", TestPrepareCommit},
		{"PrepareRollback", TestPrepareRollback},
		{"Unprepared", TestUnprepared},
		{"SurvivesDisconnect", TestSurvivesDisconnect},
		{"RecoverListsOwnBranchesOnly", TestRecoverListsOwnBranchesOnly},
		{"FinishedBranches", TestFinishedBranches},
		{"Markers", TestMarkers},
		{"FailedBranchRefusesPrepare", TestFailedBranchRefusesPrepare},
		{"StatementsAfterEnd", TestStatementsAfterEnd},
		{"ReadOnlyBranch", TestReadOnlyBranch},
		{"PoolHygiene", TestPoolHygiene},
		{"Validation", TestValidation},
		{"Context", TestContext},
		{"AbandonBlockedBranch", TestAbandonBlockedBranch},
		{"Check", TestCheck},
		{"CommitWithMarker", TestCommitWithMarker},
		{"Evidence", TestEvidence},
		{"Tombstone", TestTombstone},
		{"OutsideRollbackIsHeuristic", TestOutsideRollbackIsHeuristic},
		// Last: it kills the server, and a failure half-way could leave it
		// down for the subtests after it.
		{"SurvivesServerCrash", TestSurvivesServerCrash},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.f(t, target) })
	}
}

// testTimeout bounds one subtest; the crash test gets more.
const testTimeout = 2 * time.Minute

func timeoutContext(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}
