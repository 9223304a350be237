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
		{"PrepareCommit", testPrepareCommit},
		{"PrepareRollback", testPrepareRollback},
		{"Unprepared", testUnprepared},
		{"SurvivesDisconnect", testSurvivesDisconnect},
		{"RecoverListsOwnBranchesOnly", testRecoverOwnOnly},
		{"FinishedBranches", testFinishedBranches},
		{"Markers", testMarkers},
		{"FailedBranchRefusesPrepare", testFailedBranch},
		{"ReadOnlyBranch", testReadOnly},
		{"PoolHygiene", testPoolHygiene},
		{"Validation", testValidation},
		{"Context", testContexts},
		{"AbandonBlockedBranch", testAbandon},
		{"Check", testCheck},
		{"CommitWithMarker", testCommitWithMarker},
		{"Evidence", testEvidence},
		{"Tombstone", testTombstone},
		{"OutsideRollbackIsHeuristic", testOutsideRollback},
		// Last: it kills the server, and a failure half-way could leave it
		// down for the subtests after it.
		{"SurvivesServerCrash", testSurvivesCrash},
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
