package recovery

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/threepc/threepc/resource"
)

// The planner's tests: no database, no clock. TestPlanInvariants runs
// the planner over the cross product of the facts a scan can gather and
// every answer the databases can give to each call it asks for, and
// checks PROTOCOL.md's rules on every path; TestPlanCases pins the
// important paths, calls and report strings.

var (
	t0         = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	ourSpace   = resource.SpaceTag("")
	otherSpace = resource.SpaceTag("other")
	errDown    = errors.New("connection refused")
	errLost    = errors.New("connection reset")
)

// testGTID is a gtid created at t0.
var testGTID = func() string {
	const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
	ms := t0.UnixMilli()
	b := []byte(strings.Repeat("0", resource.GTIDLen))
	for i := 9; i >= 0; i-- {
		b[i] = crockford[ms&31]
		ms >>= 5
	}
	g := string(b)
	if !resource.GTIDTime(g).Equal(t0) {
		panic("testGTID: GTIDTime does not read the gtid's time: " + resource.GTIDTime(g).String())
	}
	return g
}()

// Marker row states a scenario puts at a resource.
type rowState int

const (
	rowNone rowState = iota
	rowPreCommit
	rowAbort
	rowCommitted
	rowForeign // a precommit row of another namespace
)

func (r rowState) String() string {
	return [...]string{"none", "precommit", "abort", "committed", "foreign"}[r]
}

// Reachability of the two resources a (the primary) and b.
type reach int

const (
	reachAll      reach = iota
	reachADown          // the primary could not be listed
	reachBDown          // b could not be listed
	reachBUnknown       // b is not one of the scanner's resources
)

func (r reach) String() string { return [...]string{"all", "a-down", "b-down", "b-unknown"}[r] }

// scenario is one combination of facts and scan state.
type scenario struct {
	rowA, rowB       rowState
	listA, listB     bool
	reach            reach
	age              time.Duration // the gtid's age
	rowAge           time.Duration // every row's age
	dry, pastDeadine bool
	bugs             bugs
}

func (s scenario) String() string {
	return fmt.Sprintf("rows a=%v b=%v, listed a=%v b=%v, reach %v, age %v, row age %v, dry %v, past deadline %v",
		s.rowA, s.rowB, s.listA, s.listB, s.reach, s.age, s.rowAge, s.dry, s.pastDeadine)
}

// possible reports whether the protocol can produce the facts: an abort
// row at the primary excludes a precommit row anywhere (PROTOCOL.md
// invariant 3), and only the primary holds a committed tombstone.
func (s scenario) possible() bool {
	return !(s.rowA == rowAbort && s.rowB == rowPreCommit) && s.rowB != rowCommitted
}

const (
	horizon    = time.Minute
	retention  = 24 * time.Hour
	tombstones = 15 * time.Minute
	deadline   = 5 * time.Minute
)

func marker(state rowState, age time.Duration) resource.Marker {
	m := resource.Marker{GTID: testGTID, Primary: "a", Participants: []string{"a", "b"}, Space: ourSpace, Age: age, Owner: "coord"}
	switch state {
	case rowPreCommit:
		m.State = resource.StatePreCommit
	case rowAbort:
		m.State = resource.StateAbort
	case rowCommitted:
		m.State = resource.StateCommitted
	case rowForeign:
		m.State, m.Space = resource.StatePreCommit, otherSpace
	}
	return m
}

func branchXID(n string) resource.XID {
	return resource.XID{GTID: testGTID, Primary: "a", Branch: n, Space: ourSpace}
}

// setup builds what the scan would have read for s, and gathers it.
func (s scenario) setup() (*planConfig, []*txFacts, time.Time) {
	names := []string{"a", "b"}
	if s.reach == reachBUnknown {
		names = []string{"a"}
	}
	fs := make([]found, len(names))
	for i, n := range names {
		row, listed := s.rowA, s.listA
		if n == "b" {
			row, listed = s.rowB, s.listB
		}
		if row != rowNone {
			fs[i].markers = append(fs[i].markers, marker(row, s.rowAge))
		}
		if listed {
			fs[i].prepared = append(fs[i].prepared, resource.PreparedBranch{XID: branchXID(n)})
		}
		// Another namespace's branch of the same gtid: never ours.
		foreign := branchXID(n)
		foreign.Space = otherSpace
		fs[i].prepared = append(fs[i].prepared, resource.PreparedBranch{XID: foreign})
		if s.reach == reachADown && n == "a" || s.reach == reachBDown && n == "b" {
			fs[i] = found{err: errDown}
		}
	}
	started := t0.Add(s.age)
	g := gather(names, fs, ourSpace, started)
	cfg := &planConfig{
		horizon: horizon, retention: retention, tombstones: tombstones, deadline: deadline,
		fenceBy: started.Add(deadline), space: ourSpace, owner: "rec", dry: s.dry,
		resources: map[string]bool{}, unreachable: g.Unreachable, bugs: s.bugs,
	}
	for _, n := range names {
		cfg.resources[n] = true
	}
	now := started
	if s.pastDeadine {
		now = started.Add(deadline)
	}
	return cfg, g.Txs, now
}

// answers lists every result a database can give to a.
func answers(a action) []result {
	errs := func(kind actionKind, es ...error) []result {
		var out []result
		for _, e := range es {
			out = append(out, result{Kind: kind, Err: e})
		}
		return out
	}
	switch a.Kind {
	case actInsertMarker:
		return errs(a.Kind, nil, fmt.Errorf("insert: %w", resource.ErrMarkerExists), errLost)
	case actReadMarker:
		out := errs(a.Kind, fmt.Errorf("read: %w", resource.ErrNoMarker), errLost)
		for _, st := range []rowState{rowPreCommit, rowAbort, rowCommitted} {
			out = append(out, result{Kind: a.Kind, Row: marker(st, 0)})
		}
		return out
	case actCommitted:
		return []result{{Kind: a.Kind, OK: true}, {Kind: a.Kind}, {Kind: a.Kind, Err: errLost}}
	case actTombstone, actDeleteMarkers:
		return errs(a.Kind, nil, errLost)
	case actFinish:
		each := []error{nil, fmt.Errorf("finish: %w", resource.ErrUnknownBranch), fmt.Errorf("finish: %w", resource.ErrHeuristic), errLost}
		out := []result{{Kind: a.Kind}}
		for range a.Branches {
			var next []result
			for _, r := range out {
				for _, e := range each {
					next = append(next, result{Kind: a.Kind, Errs: append(slices.Clone(r.Errs), e)})
				}
			}
			out = next
		}
		return out
	}
	panic(a.Kind)
}

// step is one call the planner asked for, with the answer it got.
type step struct {
	a action
	r result
}

// explore runs the planner down every path of answers and calls leaf
// with each path's calls and final report.
func explore(cfg *planConfig, f *txFacts, now time.Time, leaf func([]step, TxReport)) {
	var walk func(trace []step)
	walk = func(trace []step) {
		results := make([]result, len(trace))
		for i, s := range trace {
			results[i] = s.r
		}
		pl := plan(cfg, f, now, results)
		if pl.Next == nil {
			leaf(trace, pl.Report)
			return
		}
		if len(trace) > 20 {
			panic("plan does not end")
		}
		for _, r := range answers(*pl.Next) {
			if possibleAnswer(f, trace, r) {
				walk(append(slices.Clone(trace), step{*pl.Next, r}))
			}
		}
	}
	walk(nil)
}

// possibleAnswer reports whether the protocol lets the primary's row read
// as r after what the facts and the trace showed: an abort row excludes a
// precommit row anywhere (PROTOCOL.md invariant 3), and a decision row
// moves only from precommit to its tombstone.
func possibleAnswer(f *txFacts, trace []step, r result) bool {
	if r.Kind != actReadMarker || r.Err != nil {
		return true
	}
	var precommit, abort, committed bool
	note := func(m resource.Marker, atPrimary bool) {
		precommit = precommit || m.State == resource.StatePreCommit
		abort = abort || atPrimary && m.State == resource.StateAbort
		committed = committed || atPrimary && m.State == resource.StateCommitted
	}
	for n, m := range f.Markers {
		note(m, n == f.Primary)
	}
	for _, s := range trace {
		switch {
		case s.a.Kind == actReadMarker && s.r.Err == nil:
			note(s.r.Row, true)
		case s.a.Kind == actInsertMarker && s.r.Err == nil:
			abort = true
		}
	}
	switch r.Row.State {
	case resource.StateAbort:
		return !precommit && !committed
	case resource.StatePreCommit:
		return !abort && !committed
	}
	return !abort
}

// check returns the PROTOCOL.md rules that a path breaks.
func check(s scenario, cfg *planConfig, f *txFacts, trace []step, rep TxReport) []string {
	var bad []string
	fail := func(format string, args ...any) { bad = append(bad, fmt.Sprintf(format, args...)) }
	reachable := func(n string) bool { return cfg.resources[n] && cfg.unreachable[n] == nil }
	factRow, rowAtPrimary := f.Markers["a"]
	precommitInFacts := false
	for _, m := range f.Markers {
		if m.Space != ourSpace {
			fail("a foreign row was gathered: %+v", m)
		}
		precommitInFacts = precommitInFacts || m.State == resource.StatePreCommit
	}
	for _, b := range f.Branches {
		if b.XID.Space != ourSpace {
			fail("a foreign branch was gathered: %+v", b)
		}
	}
	precommit := precommitInFacts                                          // a precommit row is known to exist
	abortAtPrimary := rowAtPrimary && factRow.State == resource.StateAbort // an abort row at the primary is known to exist
	committedBy := map[string]bool{}                                       // branches this scan committed, proven
	evidence := map[string]bool{}                                          // participants whose evidence was read
	settledElsewhere := rowAtPrimary && factRow.State == resource.StateCommitted
	primaryGone := false // a read found no row at the primary
	tombstoned := false
	var committed, rolledBack, mutated bool
	provenAll := func() bool {
		for _, n := range []string{"a", "b"} {
			if !committedBy[n] && !evidence[n] && !settledElsewhere {
				return false
			}
		}
		return true
	}
	for i, st := range trace {
		a, r := st.a, st.r
		// A re-read of the primary's row is tried even when the
		// primary's listing failed (it may answer now); every other call
		// goes only to resources the scan listed.
		if a.Kind == actReadMarker && !cfg.resources[a.Resource] || a.Kind != actFinish && a.Kind != actReadMarker && !reachable(a.Resource) {
			fail("step %d: %v at %q, which is not reachable", i, a.Kind, a.Resource)
		}
		if a.Kind != actReadMarker && a.Kind != actCommitted {
			mutated = true
			if s.dry {
				fail("step %d: dry run %v", i, a.Kind)
			}
		}
		if s.age < horizon {
			fail("step %d: %v on a transaction younger than the horizon", i, a.Kind)
		}
		switch a.Kind {
		case actInsertMarker:
			if a.Resource != "a" || a.Marker.State != resource.StateAbort || a.Marker.Space != ourSpace {
				fail("step %d: fence %+v at %q, want an abort row of our namespace at the primary", i, a.Marker, a.Resource)
			}
			if s.pastDeadine {
				fail("step %d: fence past the scan deadline", i)
			}
			if precommitInFacts || rowAtPrimary {
				fail("step %d: fence although a deciding row was read", i)
			}
			if r.Err == nil {
				abortAtPrimary = true
			}
		case actReadMarker:
			if a.Resource != "a" {
				fail("step %d: read at %q, not the primary", i, a.Resource)
			}
			switch {
			case errors.Is(r.Err, resource.ErrNoMarker):
				// A decision row is gone only once its tombstone was
				// collected, after every branch was proven and the
				// retention passed (PROTOCOL.md, "Evidence, not
				// absence", rule 3): someone else settled it.
				primaryGone = true
				settledElsewhere = settledElsewhere || precommit
			case r.Err != nil:
			case r.Row.State == resource.StatePreCommit:
				precommit = true
			case r.Row.State == resource.StateAbort && i > 0 && trace[i-1].a.Kind == actInsertMarker:
				abortAtPrimary = true // the row that beat the fence
			case r.Row.State == resource.StateCommitted:
				settledElsewhere = true
			}
		case actFinish:
			for j, b := range a.Branches {
				if !reachable(b.Resource) {
					fail("step %d: finish at %q, which is not reachable", i, b.Resource)
				}
				if !slices.ContainsFunc(f.Branches, func(l BranchReport) bool { return l.Resource == b.Resource && l.XID == b.XID }) {
					fail("step %d: finish of a branch not listed: %+v", i, b)
				}
				if a.Commit && r.Errs[j] == nil {
					committedBy[b.Resource] = true
				}
			}
			if a.Commit {
				committed = true
				if !precommit {
					fail("step %d: commit without a precommit row", i)
				}
			} else {
				rolledBack = true
				if precommit {
					fail("step %d: roll back although a precommit row exists", i)
				}
				if !abortAtPrimary {
					fail("step %d: roll back without an abort row at the primary (no fence went in)", i)
				}
			}
		case actCommitted:
			if r.Err == nil && r.OK {
				evidence[a.Resource] = true
			}
			if a.XID.Space != ourSpace || a.XID.GTID != testGTID {
				fail("step %d: evidence of %+v", i, a.XID)
			}
		case actTombstone:
			if a.Resource != "a" {
				fail("step %d: tombstone at %q, not the primary", i, a.Resource)
			}
			if !provenAll() {
				fail("step %d: tombstone before every branch is proven committed", i)
			}
			if r.Err == nil {
				tombstoned = true
			}
		case actDeleteMarkers:
			if a.Resource == "a" {
				fail("step %d: the primary's decision row deleted", i)
			}
			if !tombstoned && !settledElsewhere && !primaryGone {
				fail("step %d: rows deleted at %q before the decision was settled", i, a.Resource)
			}
			if rep.Action == ActionHeuristic {
				fail("step %d: rows deleted for a heuristic outcome", i)
			}
		}
	}
	if committed && rolledBack {
		fail("mixed: both commit and roll back")
	}
	if s.age < horizon && (rep.Action != ActionWait || len(trace) > 0) {
		fail("young transaction: %v", rep.Action)
	}
	if rep.collect {
		if s.dry {
			fail("dry run collects")
		}
		if rep.Action == ActionHeuristic {
			fail("heuristic rows collected")
		}
		for _, n := range []string{"a", "b"} {
			if !reachable(n) {
				fail("collect with %q not scanned", n)
			}
		}
		if !allDone(rep.Branches) {
			fail("collect with a branch not finished")
		}
		if row, ok := rep.Markers["a"]; ok {
			keep := retention
			if row.State == resource.StateCommitted {
				keep = tombstones
			}
			if row.Age < keep {
				fail("%v row at the primary collected before its retention (%v < %v)", row.State, row.Age, keep)
			}
			if row.State == resource.StatePreCommit {
				fail("a precommit decision row collected")
			}
		}
		if precommitInFacts && !settledElsewhere {
			fail("rows collected beside a precommit row that was never settled")
		}
	}
	if rep.Action == ActionCommit && rep.Resolved() && !provenAll() && !primaryGone {
		fail("reported committed and resolved without every branch proven")
	}
	for _, b := range rep.Branches {
		if b.Done && committed && !committedBy[b.Resource] && !settledElsewhere {
			fail("branch %q reported done without proof of its commit", b.Resource)
		}
	}
	if rep.Action == ActionFence && !s.dry && len(f.Branches) > 0 && !abortAtPrimary {
		fail("reported fenced without a fence")
	}
	if s.dry && mutated {
		fail("dry run changed something")
	}
	return bad
}

// scenarios enumerates the cross product.
func scenarios() []scenario {
	var out []scenario
	rows := []rowState{rowNone, rowPreCommit, rowAbort, rowCommitted, rowForeign}
	for _, rowA := range rows {
		for _, rowB := range rows {
			for _, listA := range []bool{false, true} {
				for _, listB := range []bool{false, true} {
					for _, r := range []reach{reachAll, reachADown, reachBDown, reachBUnknown} {
						for _, age := range []time.Duration{30 * time.Second, 2 * time.Minute} {
							for _, rowAge := range []time.Duration{0, time.Hour, 48 * time.Hour} {
								for _, dry := range []bool{false, true} {
									for _, past := range []bool{false, true} {
										out = append(out, scenario{rowA: rowA, rowB: rowB, listA: listA, listB: listB, reach: r,
											age: age, rowAge: rowAge, dry: dry, pastDeadine: past})
									}
								}
							}
						}
					}
				}
			}
		}
	}
	return out
}

// violations runs every possible scenario (with the given bugs) down
// every path and returns the first few violations, and the numbers of
// transactions planned and paths.
func violations(b bugs, limit int) (bad []string, scens, paths int) {
	for _, s := range scenarios() {
		if !s.possible() {
			continue
		}
		s.bugs = b
		cfg, txs, now := s.setup()
		for _, f := range txs {
			scens++
			explore(cfg, f, now, func(trace []step, rep TxReport) {
				paths++
				if len(bad) >= limit {
					return
				}
				for _, v := range check(s, cfg, f, trace, rep) {
					bad = append(bad, fmt.Sprintf("%v: %s\n\tcalls: %s\n\treport: %v %q", s, v, traceString(trace), rep.Action, rep.Reason))
				}
			})
		}
	}
	return bad, scens, paths
}

func traceString(trace []step) string {
	var parts []string
	for _, s := range trace {
		parts = append(parts, actionString(s.a)+" -> "+resultString(s.r))
	}
	return strings.Join(parts, "; ")
}

func actionString(a action) string {
	switch a.Kind {
	case actFinish:
		verb := "rollback"
		if a.Commit {
			verb = "commit"
		}
		var at []string
		for _, b := range a.Branches {
			at = append(at, b.Resource)
		}
		return verb + " " + strings.Join(at, ",")
	case actInsertMarker:
		return fmt.Sprintf("%v %s %s", a.Kind, a.Marker.State, a.Resource)
	}
	return fmt.Sprintf("%v %s", a.Kind, a.Resource)
}

func resultString(r result) string {
	switch {
	case r.Kind == actFinish:
		return fmt.Sprint(r.Errs)
	case r.Err != nil:
		return r.Err.Error()
	case r.Kind == actReadMarker:
		return string(r.Row.State)
	case r.Kind == actCommitted:
		return fmt.Sprint(r.OK)
	}
	return "ok"
}

func TestPlanInvariants(t *testing.T) {
	bad, scens, paths := violations(bugs{}, 10)
	for _, v := range bad {
		t.Error(v)
	}
	possible := 0
	for _, s := range scenarios() {
		if s.possible() {
			possible++
		}
	}
	t.Logf("%d scenarios, %d possible, %d with a transaction of ours to plan, %d paths of answers", len(scenarios()), possible, scens, paths)
}

// TestPlanInvariantsCatchSeededBugs: each planted recovery bug breaks a
// checked rule somewhere in the cross product, so the checker has the
// power to find such bugs.
func TestPlanInvariantsCatchSeededBugs(t *testing.T) {
	for name, b := range map[string]bugs{
		"abort without fence":                        {abortWithoutFence: true},
		"fence without deadline":                     {fenceWithoutDeadline: true},
		"collect after late decision":                {collectAfterLateDecision: true},
		"decision row deleted instead of tombstoned": {deleteDecisionRow: true},
		"abort rows deleted before retention":        {earlyAbortCleanup: true},
	} {
		t.Run(name, func(t *testing.T) {
			bad, _, _ := violations(b, 1)
			if len(bad) == 0 {
				t.Fatal("no rule broken")
			}
			t.Log(bad[0])
		})
	}
}

// run drives the planner with scripted answers, in order, and returns
// the calls it asked for and the final report.
func run(t *testing.T, cfg *planConfig, f *txFacts, now time.Time, script []result) ([]step, []string, TxReport) {
	t.Helper()
	var trace []step
	var results []result
	var calls []string
	for {
		pl := plan(cfg, f, now, results)
		if pl.Next == nil {
			if len(results) < len(script) {
				t.Fatalf("%d scripted answers not used; calls %v", len(script)-len(results), calls)
			}
			return trace, calls, pl.Report
		}
		calls = append(calls, actionString(*pl.Next))
		if len(results) == len(script) {
			t.Fatalf("no scripted answer for %s; calls %v", actionString(*pl.Next), calls)
		}
		trace = append(trace, step{*pl.Next, script[len(results)]})
		results = append(results, script[len(results)])
	}
}

func ok(k actionKind) result { return result{Kind: k} }

func read(st rowState) result { return result{Kind: actReadMarker, Row: marker(st, 0)} }

func finished(errs ...error) result { return result{Kind: actFinish, Errs: errs} }

func TestPlanCases(t *testing.T) {
	old := 2 * time.Minute
	exists := result{Kind: actInsertMarker, Err: fmt.Errorf("insert: %w", resource.ErrMarkerExists)}
	heur := fmt.Errorf("commit: %w", resource.ErrHeuristic)
	gone := result{Kind: actReadMarker, Err: fmt.Errorf("read: %w", resource.ErrNoMarker)}
	evidence := func(ok bool) result { return result{Kind: actCommitted, OK: ok} }
	cases := []struct {
		name     string
		s        scenario
		script   []result
		calls    []string
		action   Action
		reason   string
		err      string // substring; "" for none
		resolved bool
		collect  bool
	}{
		{name: "young: left in flight",
			s:      scenario{listA: true, listB: true, age: 30 * time.Second},
			action: ActionWait, reason: "younger than the in-flight horizon (1m0s)"},
		{name: "decided: commit, tombstone, delete",
			s:      scenario{rowA: rowPreCommit, rowB: rowPreCommit, listA: true, listB: true, age: old},
			script: []result{finished(nil, nil), ok(actTombstone), ok(actDeleteMarkers)},
			calls:  []string{"commit a,b", "tombstone a", "delete-markers b"},
			action: ActionCommit, reason: "precommit row found; every branch proven committed", resolved: true},
		{name: "decided, a committed before the listing: its evidence is read",
			s:      scenario{rowA: rowPreCommit, listB: true, age: old},
			script: []result{finished(nil), evidence(true), ok(actTombstone), ok(actDeleteMarkers)},
			calls:  []string{"commit b", "committed a", "tombstone a", "delete-markers b"},
			action: ActionCommit, reason: "precommit row found; every branch proven committed", resolved: true},
		{name: "decided, a gone without its evidence: heuristic",
			s:      scenario{rowA: rowPreCommit, listB: true, age: old},
			script: []result{finished(nil), evidence(false), read(rowPreCommit)},
			calls:  []string{"commit b", "committed a", "read-marker a"},
			action: ActionHeuristic, reason: "decided to commit, but branch [a] is gone without the evidence of its commit; " + hintOrphan},
		{name: "decided, a gone, settled and collected meanwhile: leftovers deleted",
			s:      scenario{rowA: rowPreCommit, rowB: rowPreCommit, listB: true, age: old},
			script: []result{finished(nil), evidence(false), gone, ok(actDeleteMarkers)},
			calls:  []string{"commit b", "committed a", "read-marker a", "delete-markers b"},
			action: ActionCommit, reason: "precommit row found; the primary's row was settled and collected: leftover rows deleted", resolved: true},
		{name: "decided, commit answers heuristic, the primary says committed: settled meanwhile",
			s:      scenario{rowA: rowPreCommit, listA: true, listB: true, age: old},
			script: []result{finished(heur, nil), read(rowCommitted), ok(actTombstone), ok(actDeleteMarkers)},
			calls:  []string{"commit a,b", "read-marker a", "tombstone a", "delete-markers b"},
			action: ActionCommit, reason: "precommit row found; settled meanwhile by another actor; every branch proven committed", resolved: true},
		{name: "3PC: primary down, precommit row at b: b committed, a not proven",
			s:      scenario{rowB: rowPreCommit, listB: true, reach: reachADown, age: old},
			script: []result{finished(nil)},
			calls:  []string{"commit b"},
			action: ActionCommit, reason: "precommit row found", err: `participant "a" not scanned`},
		{name: "no row: fence and roll back",
			s:      scenario{listA: true, listB: true, age: old},
			script: []result{ok(actInsertMarker), finished(nil, nil)},
			calls:  []string{"insert-marker abort a", "rollback a,b"},
			action: ActionFence, reason: "no marker row; fenced at the primary", resolved: true},
		{name: "no row: fenced, nothing left to roll back",
			s:      scenario{listA: true, age: old},
			script: []result{ok(actInsertMarker), finished(fmt.Errorf("rollback: %w", resource.ErrUnknownBranch))},
			calls:  []string{"insert-marker abort a", "rollback a"},
			action: ActionFence, reason: "no marker row; fenced at the primary; no branch was left to roll back (finished elsewhere)", resolved: true},
		{name: "fence lost to precommit: commit",
			s:      scenario{listA: true, listB: true, age: old},
			script: []result{exists, read(rowPreCommit), finished(nil, nil), ok(actTombstone), ok(actDeleteMarkers)},
			calls:  []string{"insert-marker abort a", "read-marker a", "commit a,b", "tombstone a", "delete-markers b"},
			action: ActionCommit, reason: "the fence lost to the coordinator's precommit row; every branch proven committed", resolved: true},
		{name: "fence lost to a late decision: missing evidence proves nothing yet",
			s:      scenario{listA: true, age: old},
			script: []result{exists, read(rowPreCommit), finished(nil), evidence(false)},
			calls:  []string{"insert-marker abort a", "read-marker a", "commit a", "committed b"},
			action: ActionCommit, reason: "the fence lost to the coordinator's precommit row; decision learned after the branch listing: [b] not proven committed yet, the next scan checks the evidence"},
		{name: "fence lost to a tombstone",
			s:      scenario{listA: true, listB: true, age: old},
			script: []result{exists, read(rowCommitted)},
			calls:  []string{"insert-marker abort a", "read-marker a"},
			action: ActionWait, reason: "the fence lost: the coordinator committed every branch (tombstone at the primary)", resolved: true},
		{name: "fence lost to another scanner's fence",
			s:      scenario{listA: true, listB: true, age: old},
			script: []result{exists, read(rowAbort), finished(nil, nil)},
			calls:  []string{"insert-marker abort a", "read-marker a", "rollback a,b"},
			action: ActionRollback, reason: "abort row at the primary (another scanner fenced)", resolved: true},
		{name: "fence met a row that is gone",
			s:      scenario{listA: true, age: old},
			script: []result{exists, gone},
			calls:  []string{"insert-marker abort a", "read-marker a"},
			action: ActionWait, reason: "the fence met a marker row that is gone now; next scan re-reads"},
		{name: "fence outcome unknown: in doubt",
			s:      scenario{listA: true, age: old},
			script: []result{{Kind: actInsertMarker, Err: errLost}},
			calls:  []string{"insert-marker abort a"},
			action: ActionInDoubt, reason: "fence at the primary failed", err: errLost.Error()},
		{name: "no row, primary down: in doubt, never guessed",
			s:      scenario{listB: true, reach: reachADown, age: old},
			action: ActionInDoubt, reason: `primary "a" unreachable and no precommit row on any reachable participant`, err: errDown.Error()},
		{name: "no row, past the scan deadline: no fence",
			s:      scenario{listA: true, age: old, pastDeadine: true},
			action: ActionWait, reason: "scan ran past its deadline (5m0s) before fencing; the next scan re-reads"},
		{name: "dry run, no row",
			s:      scenario{listA: true, listB: true, age: old, dry: true},
			action: ActionFence, reason: "no marker row: would fence at the primary and roll back"},
		{name: "dry run, decided: evidence read, nothing changed",
			s:      scenario{rowA: rowPreCommit, listB: true, age: old, dry: true},
			script: []result{evidence(true)},
			calls:  []string{"committed a"},
			action: ActionCommit, reason: "precommit row found"},
		{name: "abort row: roll back, kept for retention",
			s:      scenario{rowA: rowAbort, listA: true, listB: true, age: old},
			script: []result{finished(nil, nil)},
			calls:  []string{"rollback a,b"},
			action: ActionRollback, reason: "abort row at the primary", resolved: true},
		{name: "abort row within retention",
			s:      scenario{rowA: rowAbort, age: old, rowAge: time.Hour},
			action: ActionWait, reason: "abort row kept for the retention period (24h0m0s)", resolved: true},
		{name: "abort row past retention: collected",
			s:      scenario{rowA: rowAbort, age: old, rowAge: 48 * time.Hour},
			action: ActionCollect, reason: "finished, retention passed: marker rows deleted", resolved: true, collect: true},
		{name: "abort row past retention, b down: kept",
			s:      scenario{rowA: rowAbort, age: old, rowAge: 48 * time.Hour, reach: reachBDown},
			action: ActionWait, reason: `marker rows kept: participant "b" not scanned`, resolved: true},
		{name: "abort row, a branch committed: heuristic",
			s:      scenario{rowA: rowAbort, listA: true, listB: true, age: old},
			script: []result{finished(nil, fmt.Errorf("rollback: %w", resource.ErrHeuristic))},
			calls:  []string{"rollback a,b"},
			action: ActionHeuristic, reason: "abort row at the primary, but branch [b] committed (committed outside threepc?); rows kept: repair by hand"},
		{name: "tombstone with a leftover row: deleted, tombstone kept",
			s:      scenario{rowA: rowCommitted, rowB: rowPreCommit, age: old},
			script: []result{ok(actDeleteMarkers)},
			calls:  []string{"delete-markers b"},
			action: ActionWait, reason: "committed; the primary's tombstone is kept for the retention period (15m0s)", resolved: true},
		{name: "tombstone past its retention: collected",
			s:      scenario{rowA: rowCommitted, age: old, rowAge: time.Hour},
			action: ActionCollect, reason: "finished, retention passed: marker rows deleted", resolved: true, collect: true},
		{name: "tombstone beside a prepared branch: heuristic",
			s:      scenario{rowA: rowCommitted, listB: true, age: old},
			action: ActionHeuristic, reason: "the primary's tombstone says every branch committed, but branch [b] is prepared; rows kept: investigate"},
		{name: "foreign rows and branches: not ours, nothing to do",
			s: scenario{rowA: rowForeign, rowB: rowForeign, age: old}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, txs, now := c.s.setup()
			if c.action == "" {
				if len(txs) != 0 {
					t.Fatalf("gathered %+v, want nothing", txs)
				}
				return
			}
			if len(txs) != 1 {
				t.Fatalf("gathered %d transactions, want 1", len(txs))
			}
			trace, calls, rep := run(t, cfg, txs[0], now, c.script)
			if !slices.Equal(calls, c.calls) {
				t.Errorf("calls %q, want %q", calls, c.calls)
			}
			if rep.Action != c.action || rep.Reason != c.reason {
				t.Errorf("report %v %q, want %v %q", rep.Action, rep.Reason, c.action, c.reason)
			}
			if c.err == "" && rep.Err != nil || c.err != "" && (rep.Err == nil || !strings.Contains(rep.Err.Error(), c.err)) {
				t.Errorf("err %v, want %q", rep.Err, c.err)
			}
			if rep.Resolved() != c.resolved || rep.collect != c.collect {
				t.Errorf("resolved %v collect %v, want %v %v", rep.Resolved(), rep.collect, c.resolved, c.collect)
			}
			for _, v := range check(c.s, cfg, txs[0], trace, rep) {
				t.Error(v)
			}
		})
	}
}

// TestPlanIsPure: the same facts and results give the same plan, and
// the facts are not changed.
func TestPlanIsPure(t *testing.T) {
	s := scenario{listA: true, listB: true, age: 2 * time.Minute}
	cfg, txs, now := s.setup()
	f := txs[0]
	results := []result{{Kind: actInsertMarker}}
	a, b := plan(cfg, f, now, results), plan(cfg, f, now, results)
	if a.Next == nil || b.Next == nil || fmt.Sprint(*a.Next, a.Report) != fmt.Sprint(*b.Next, b.Report) {
		t.Fatalf("two plans differ:\n%v\n%v", a, b)
	}
	if len(f.Markers) != 0 {
		t.Fatalf("the facts were changed: %+v", f.Markers)
	}
}

// TestGatherFiltersNamespaces: rows and branches of other namespaces are
// left out (branches counted as foreign), and ages are measured at now.
func TestGatherFiltersNamespaces(t *testing.T) {
	s := scenario{rowA: rowForeign, listA: true, listB: true, age: 2 * time.Minute}
	names := []string{"a", "b"}
	fs := []found{
		{markers: []resource.Marker{marker(rowForeign, 0)}, prepared: []resource.PreparedBranch{{XID: branchXID("a")}}},
		{prepared: []resource.PreparedBranch{{XID: func() resource.XID { x := branchXID("b"); x.Space = otherSpace; return x }()}}},
	}
	g := gather(names, fs, ourSpace, t0.Add(s.age))
	if g.Foreign != 1 || len(g.Txs) != 1 || len(g.Txs[0].Markers) != 0 || len(g.Txs[0].Branches) != 1 || g.Txs[0].Age != s.age {
		t.Fatalf("gathered %+v (foreign %d)", g.Txs, g.Foreign)
	}
	if !slices.Equal(g.Txs[0].Participants, []string{"a"}) {
		t.Fatalf("participants %v", g.Txs[0].Participants)
	}
}

// TestPlanCollect: non-primary rows in the first round, primaries in the
// second; failed transactions are left out of the second round.
func TestPlanCollect(t *testing.T) {
	txs := []TxReport{
		{GTID: "g1", Primary: "a", Participants: []string{"a", "b"}, collect: true},
		{GTID: "g2", Primary: "b", Participants: []string{"a", "b"}, collect: true},
		{GTID: "g3", Primary: "a", Participants: []string{"a", "b"}},
	}
	first := planCollect(txs, false)
	if fmt.Sprint(first) != "[{a [g2] [1]} {b [g1] [0]}]" {
		t.Fatalf("first round %v", first)
	}
	collected(txs, first, []error{errLost, nil})
	if txs[1].Err == nil || txs[0].Err != nil {
		t.Fatalf("errors %v %v", txs[0].Err, txs[1].Err)
	}
	if second := planCollect(txs, true); fmt.Sprint(second) != "[{a [g1] [0]}]" {
		t.Fatalf("second round %v", second)
	}
}
