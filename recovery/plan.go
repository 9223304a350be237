package recovery

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/threepc/threepc/resource"
)

// The planner decides; the scanner does. plan is a pure function of one
// transaction's facts (as a scan gathered them), the time, the scan's
// configuration and the results of the database calls it asked for so
// far. It returns the next call to make, or none once the transaction is
// done for this scan, and the report as it stands. Where the outcome
// depends on a call's result (a fence that meets a row, a commit whose
// proof is missing) the scanner makes the call and asks again with the
// result appended: the planner replays its decisions from the facts and
// goes one step further. So every decision can be tested without a
// database (plan_test.go), and the scanner holds no protocol logic.

// planConfig is what the planner knows besides one transaction's facts:
// the scanner's options and the scan's state.
type planConfig struct {
	horizon    time.Duration
	retention  time.Duration // of abort rows
	tombstones time.Duration // of committed tombstones
	deadline   time.Duration // the scan deadline (for the reason string)
	fenceBy    time.Time     // no fence at or after this time
	space      string        // the scanner's namespace tag
	owner      string        // written in the abort rows it inserts
	dry        bool
	// resources are the scanner's resources; unreachable, those the
	// scan could not list.
	resources   map[string]bool
	unreachable map[string]error
	bugs        bugs
}

// bugs are the seeded bugs (internal/seeded) that concern the planner,
// read by the scanner so that the planner stays pure.
type bugs struct {
	abortWithoutFence        bool
	fenceWithoutDeadline     bool
	collectAfterLateDecision bool
	deleteDecisionRow        bool
	earlyAbortCleanup        bool
}

// txFacts is what a scan read about one global transaction of its
// namespace.
type txFacts struct {
	GTID         string
	Primary      string
	Participants []string // from the marker rows and the branches seen
	Age          time.Duration
	Branches     []BranchReport             // the prepared branches listed
	Markers      map[string]resource.Marker // by resource
}

// actionKind is a database call the planner asks for.
type actionKind int

const (
	// actInsertMarker inserts Marker (the fence: an abort row) at
	// Resource. Result: Err.
	actInsertMarker actionKind = iota + 1
	// actReadMarker reads the gtid's row at Resource (the primary).
	// Result: Row, Err.
	actReadMarker
	// actFinish commits (Commit) or rolls back every branch in
	// Branches, in parallel. Result: Errs, one per branch.
	actFinish
	// actCommitted reads the evidence of branch XID at Resource.
	// Result: OK, Err.
	actCommitted
	// actTombstone turns the gtid's precommit row at Resource into a
	// committed tombstone. Result: Err.
	actTombstone
	// actDeleteMarkers deletes the gtid's rows at Resource. Result: Err.
	actDeleteMarkers
)

var actionNames = map[actionKind]string{
	actInsertMarker: "insert-marker", actReadMarker: "read-marker", actFinish: "finish",
	actCommitted: "committed", actTombstone: "tombstone", actDeleteMarkers: "delete-markers",
}

func (k actionKind) String() string { return actionNames[k] }

// action is one database call for the scanner to make.
type action struct {
	Kind     actionKind
	Resource string          // every kind but actFinish
	GTID     string          // actReadMarker, actTombstone, actDeleteMarkers
	Marker   resource.Marker // actInsertMarker
	XID      resource.XID    // actCommitted
	Commit   bool            // actFinish: commit, else roll back
	Branches []BranchReport  // actFinish: the branches (Resource, XID)
}

// result is what the call asked for by an action returned.
type result struct {
	Kind actionKind // the action's, checked by the planner
	Err  error
	Row  resource.Marker // actReadMarker
	OK   bool            // actCommitted
	Errs []error         // actFinish, one per branch
}

// txPlan is the planner's answer.
type txPlan struct {
	// Next is the call to make and then ask again with its result; nil
	// when the transaction is done for this scan.
	Next *action
	// Report is the transaction's report as it stands (final when Next is
	// nil).
	Report TxReport
}

// plan decides what to do about one transaction, given its facts, the
// time (read just before the first call; it matters only to the fence's
// deadline) and the results of the actions it returned so far, in order.
func plan(cfg *planConfig, f *txFacts, now time.Time, results []result) txPlan {
	p := &planner{cfg: cfg, now: now, results: results, t: TxReport{
		GTID: f.GTID, Primary: f.Primary, Participants: slices.Clone(f.Participants), Age: f.Age,
		Branches: slices.Clone(f.Branches), Markers: maps.Clone(f.Markers),
	}}
	if p.t.Markers == nil {
		p.t.Markers = map[string]resource.Marker{}
	}
	p.resolve()
	if len(p.results) > 0 && p.next == nil {
		panic(fmt.Sprintf("threepc/recovery: plan of %s: %d results left over", f.GTID, len(p.results)))
	}
	return txPlan{Next: p.next, Report: p.t}
}

// planner is plan's state while it replays one transaction's decisions.
type planner struct {
	cfg     *planConfig
	now     time.Time
	t       TxReport
	results []result // not consumed yet
	next    *action  // the action whose result is missing
}

// do returns the result of a if it was given; otherwise it records a as
// the next action and reports false, and the caller returns at once.
func (p *planner) do(a action) (result, bool) {
	if p.next != nil {
		panic(fmt.Sprintf("threepc/recovery: plan of %s: %v asked for while waiting for the result of %v", p.t.GTID, a.Kind, p.next.Kind))
	}
	if len(p.results) == 0 {
		p.next = &a
		return result{}, false
	}
	r := p.results[0]
	p.results = p.results[1:]
	if r.Kind != a.Kind {
		panic(fmt.Sprintf("threepc/recovery: plan of %s: a %v result given for a %v action", p.t.GTID, r.Kind, a.Kind))
	}
	return r, true
}

// blocked reports whether the planner waits for a result.
func (p *planner) blocked() bool { return p.next != nil }

func (p *planner) known(name string) bool { return p.cfg.resources[name] }

// reachable reports whether name is one of the scanner's resources and
// was listed by this scan.
func (p *planner) reachable(name string) bool {
	return p.known(name) && p.cfg.unreachable[name] == nil
}

// resolve decides on one transaction.
func (p *planner) resolve() {
	t := &p.t
	if t.Age < p.cfg.horizon {
		t.Action, t.Reason = ActionWait, fmt.Sprintf("younger than the in-flight horizon (%v)", p.cfg.horizon)
		return
	}
	row, atPrimary := t.Markers[t.Primary]
	decided := slices.ContainsFunc(slices.Collect(maps.Values(t.Markers)), func(m resource.Marker) bool {
		return m.State == resource.StatePreCommit
	})
	switch {
	case atPrimary && row.State == resource.StateCommitted:
		p.settled()
	case atPrimary && row.State == resource.StateAbort:
		if len(t.Branches) > 0 {
			t.Action, t.Reason = ActionRollback, "abort row at the primary"
			if p.finish(false); p.blocked() {
				return
			}
		}
		p.collect()
	case decided:
		t.Action, t.Reason = ActionCommit, "precommit row found"
		if p.finish(true); p.blocked() {
			return
		}
		p.complete()
	case len(t.Branches) == 0:
		// Rows that decide nothing (a non-primary row whose primary row
		// is gone): collected once old enough.
		p.collect()
	default:
		p.fence()
	}
}

// fence inserts the abort row at the primary, then acts on whichever row
// is there.
func (p *planner) fence() {
	t := &p.t
	if !p.known(t.Primary) {
		t.Action, t.Reason = ActionInDoubt, fmt.Sprintf("primary %q is not one of this scanner's resources", t.Primary)
		return
	}
	if err := p.cfg.unreachable[t.Primary]; err != nil {
		t.Action, t.Reason, t.Err = ActionInDoubt, fmt.Sprintf("primary %q unreachable and no precommit row on any reachable participant", t.Primary), err
		return
	}
	if p.cfg.dry {
		t.Action, t.Reason = ActionFence, "no marker row: would fence at the primary and roll back"
		return
	}
	if p.cfg.bugs.abortWithoutFence {
		t.Action, t.Reason = ActionFence, "seeded bug: abort without fence"
		p.finish(false)
		return
	}
	// A scan that has run this long may be acting on markers read before
	// a decision whose row could, in principle, be collected by now: it
	// does not fence. The next scan reads afresh.
	if !p.now.Before(p.cfg.fenceBy) && !p.cfg.bugs.fenceWithoutDeadline {
		t.Action, t.Reason = ActionWait, fmt.Sprintf("scan ran past its deadline (%v) before fencing; the next scan re-reads", p.cfg.deadline)
		return
	}
	r, ok := p.do(action{Kind: actInsertMarker, Resource: t.Primary, Marker: resource.Marker{
		GTID: t.GTID, State: resource.StateAbort, Primary: t.Primary,
		Participants: t.Participants, Owner: p.cfg.owner, Space: p.cfg.space,
	}})
	if !ok {
		return
	}
	err := r.Err
	if errors.Is(err, resource.ErrMarkerExists) {
		r, ok := p.do(action{Kind: actReadMarker, Resource: t.Primary, GTID: t.GTID})
		if !ok {
			return
		}
		row := r.Row
		err = r.Err
		if errors.Is(err, resource.ErrNoMarker) {
			// The row that beat the fence is gone already (collected after
			// its retention): the next scan sees what is left.
			t.Action, t.Reason, t.lateDecision = ActionWait, "the fence met a marker row that is gone now; next scan re-reads", true
			return
		}
		if err == nil {
			// The decision was learned after the branch listing, so the
			// listing proves nothing about branches prepared since.
			t.lateDecision = true
			t.Markers[t.Primary] = row
			t.Participants = slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(t.Participants), row.Participants...))))
			switch row.State {
			case resource.StateCommitted:
				t.Action, t.Reason = ActionWait, "the fence lost: the coordinator committed every branch (tombstone at the primary)"
				for i := range t.Branches {
					t.Branches[i].Done = true
				}
			case resource.StatePreCommit:
				t.Action, t.Reason = ActionCommit, "the fence lost to the coordinator's precommit row"
				if p.finish(true); p.blocked() {
					return
				}
				p.complete()
			default:
				t.Action, t.Reason = ActionRollback, "abort row at the primary (another scanner fenced)"
				p.finish(false)
			}
			return
		}
	}
	if err != nil {
		// The insert's outcome may be unknown: the next scan reads it.
		t.Action, t.Reason, t.Err = ActionInDoubt, "fence at the primary failed", err
		return
	}
	t.Markers[t.Primary] = resource.Marker{GTID: t.GTID, State: resource.StateAbort, Primary: t.Primary, Participants: t.Participants, Space: p.cfg.space}
	t.Action, t.Reason = ActionFence, "no marker row; fenced at the primary"
	n := p.finish(false)
	if p.blocked() {
		return
	}
	if n == 0 && len(t.Branches) > 0 && t.Action == ActionFence {
		t.Reason = "no marker row; fenced at the primary; no branch was left to roll back (finished elsewhere)"
	}
}

// finish commits or rolls back every prepared branch found, and returns
// how many it finished itself. A commit counts only on the driver's proof
// (resource.Resource.CommitPrepared); a contradiction makes the
// transaction heuristic.
func (p *planner) finish(commit bool) int {
	t := &p.t
	if p.cfg.dry {
		return 0
	}
	done := make([]bool, len(t.Branches))
	if len(t.Branches) > 0 {
		r, ok := p.do(action{Kind: actFinish, Commit: commit, Branches: slices.Clone(t.Branches)})
		if !ok {
			return 0
		}
		for i, err := range r.Errs {
			b := &t.Branches[i]
			if !commit && errors.Is(err, resource.ErrUnknownBranch) {
				// Not prepared any more and not committed: nothing is
				// left to roll back.
				b.Done = true
				continue
			}
			done[i] = err == nil
			b.Done, b.Err = err == nil, err
		}
	}
	n := 0
	for i := range t.Branches {
		b := &t.Branches[i]
		if done[i] {
			n++
		}
		if !errors.Is(b.Err, resource.ErrHeuristic) {
			continue
		}
		if commit && len(t.Lost) == 0 {
			// Another scanner, or the coordinator, may have finished and
			// settled it since the listing, evidence rows and all: the
			// tombstone says so (and a decision row is gone only once its
			// tombstone was collected).
			r, ok := p.readPrimary()
			if !ok {
				return 0
			}
			switch {
			case r.Err == nil && r.Row.State == resource.StateCommitted, errors.Is(r.Err, resource.ErrNoMarker):
				for j := range t.Branches {
					t.Branches[j].Done, t.Branches[j].Err = true, nil
				}
				t.Reason += "; settled meanwhile by another actor"
				return n
			case r.Err != nil:
				b.Err = fmt.Errorf("the branch is gone without its evidence, and the primary's row could not be read to tell whether a peer settled the transaction: %w", r.Err)
				continue
			}
		}
		t.Lost = append(t.Lost, b.Resource)
	}
	if len(t.Lost) > 0 {
		if commit {
			t.Action, t.Reason = ActionHeuristic, fmt.Sprintf("decided to commit, but branch %v is gone without the evidence of its commit; %s", t.Lost, hintOrphan)
		} else {
			t.Action, t.Reason = ActionHeuristic, fmt.Sprintf("abort row at the primary, but branch %v committed (committed outside threepc?); rows kept: repair by hand", t.Lost)
		}
	}
	return n
}

// complete settles a transaction decided to commit once every participant
// is proven committed: by this scan's own commit or by its evidence row.
// A participant that is neither listed as prepared nor proven, when the
// decision was read before the listing, contradicts the decision.
func (p *planner) complete() {
	t := &p.t
	if t.Action == ActionHeuristic {
		return
	}
	proven := map[string]bool{}
	listed := map[string]bool{}
	for _, b := range t.Branches {
		listed[b.Resource] = true
		proven[b.Resource] = b.Done
	}
	var missing []string
	for _, n := range decisionParticipants(t) {
		if proven[n] {
			continue
		}
		if !p.reachable(n) {
			t.Err = fmt.Errorf("participant %q not scanned: its branch is not proven committed", n)
			return
		}
		if listed[n] {
			return // still prepared: the next scan retries
		}
		if t.lateDecision && p.cfg.bugs.collectAfterLateDecision {
			continue // the planted bug trusts the stale listing
		}
		r, ok := p.do(action{Kind: actCommitted, Resource: n, XID: resource.XID{GTID: t.GTID, Primary: t.Primary, Branch: n, Space: p.cfg.space}})
		if !ok {
			return
		}
		if r.Err != nil {
			t.Err = fmt.Errorf("reading the evidence at %q: %w", n, r.Err)
			return
		}
		if !r.OK {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		if t.lateDecision {
			// The listing predates the decision: the branch may have been
			// prepared since, and be committing now.
			t.Reason += fmt.Sprintf("; decision learned after the branch listing: %v not proven committed yet, the next scan checks the evidence", missing)
			t.unproven = true
			return
		}
		// Every branch was prepared before the decision row this scan
		// read, so each was either listed or finished by then. Unless
		// the transaction has been settled meanwhile, the missing
		// evidence is real.
		r, ok := p.readPrimary()
		if !ok {
			return
		}
		switch {
		case errors.Is(r.Err, resource.ErrNoMarker):
			// A decision row (this precommit row proves there was one)
			// disappears only when its tombstone is collected, after every
			// branch was proven and the retention passed: these rows are
			// leftovers.
			if !p.cfg.dry {
				if p.deleteRows(); p.blocked() {
					return
				}
			}
			t.Reason += "; the primary's row was settled and collected: leftover rows deleted"
			return
		case r.Err != nil:
			t.Err = r.Err
			return
		case r.Row.State != resource.StatePreCommit:
			return
		}
		t.Lost = missing
		t.Action, t.Reason = ActionHeuristic, fmt.Sprintf("decided to commit, but branch %v is gone without the evidence of its commit; %s", missing, hintOrphan)
		return
	}
	if p.cfg.dry {
		return
	}
	p.settle()
}

// decisionParticipants is the participant list the coordinator wrote in
// its decision row (the branches that needed a commit: read-only voters
// are not in it), or, without such a row, every participant seen.
func decisionParticipants(t *TxReport) []string {
	if m, ok := t.Markers[t.Primary]; ok && m.State != resource.StateAbort {
		return m.Participants
	}
	for _, m := range t.Markers {
		if m.State == resource.StatePreCommit {
			return m.Participants
		}
	}
	return t.Participants
}

// readPrimary re-reads the primary's marker row. A primary that is not
// one of the scanner's resources gives an error without a call.
func (p *planner) readPrimary() (result, bool) {
	if !p.known(p.t.Primary) {
		return result{Kind: actReadMarker, Err: fmt.Errorf("primary %q is not one of this scanner's resources", p.t.Primary)}, true
	}
	return p.do(action{Kind: actReadMarker, Resource: p.t.Primary, GTID: p.t.GTID})
}

// settle makes the primary's decision row a tombstone and deletes the
// other participants' rows, in that order (see txmanager's clean-up).
func (p *planner) settle() {
	t := &p.t
	if !p.reachable(t.Primary) {
		// The others' rows stay too: while the primary says precommit, a
		// scan needs every branch's evidence.
		t.Reason += "; primary not reachable: the rows are settled later"
		return
	}
	// Always, even when this scan did not list the primary's row: the
	// listings run in parallel, so the primary may have been listed
	// before its decision and the others after their precommit rows. A
	// missing or already settled row is left alone.
	kind := actTombstone
	if p.cfg.bugs.deleteDecisionRow {
		kind = actDeleteMarkers
	}
	r, ok := p.do(action{Kind: kind, Resource: t.Primary, GTID: t.GTID})
	if !ok {
		return
	}
	if r.Err != nil {
		t.Err = fmt.Errorf("settling the decision row at %q: %w", t.Primary, r.Err)
		return
	}
	if p.deleteRows(); p.blocked() {
		return
	}
	if t.Err == nil {
		t.Reason += "; every branch proven committed"
	}
}

// settled handles a transaction whose primary row is a committed
// tombstone: every branch was proven committed. Leftover rows elsewhere
// are deleted; the tombstone goes after the retention period.
func (p *planner) settled() {
	t := &p.t
	if len(t.Branches) > 0 {
		// The tombstone was read before the listing: a branch listed as
		// prepared contradicts it.
		for _, b := range t.Branches {
			t.Lost = append(t.Lost, b.Resource)
		}
		t.Action, t.Reason = ActionHeuristic, fmt.Sprintf("the primary's tombstone says every branch committed, but branch %v is prepared; rows kept: investigate", t.Lost)
		return
	}
	row := t.Markers[t.Primary]
	if row.Age >= p.cfg.tombstones {
		p.collect()
		return
	}
	if len(t.Markers) > 1 && !p.cfg.dry {
		if p.deleteRows(); p.blocked() {
			return
		}
	}
	if t.Action == "" {
		t.Action, t.Reason = ActionWait, fmt.Sprintf("committed; the primary's tombstone is kept for the retention period (%v)", p.cfg.tombstones)
	}
}

// collect marks for deletion the rows of a finished transaction whose
// primary row (an abort or committed tombstone) has outlived the
// retention period, by the database's clock. Every participant must have
// been scanned. The scanner deletes them in batches at the end of the
// scan (planCollect).
func (p *planner) collect() {
	t := &p.t
	if len(t.Markers) == 0 || len(t.Branches) > 0 && !allDone(t.Branches) {
		return
	}
	for _, n := range t.Participants {
		if !p.reachable(n) {
			if t.Action == "" {
				t.Action, t.Reason = ActionWait, fmt.Sprintf("marker rows kept: participant %q not scanned", n)
			}
			return
		}
	}
	if row, ok := t.Markers[t.Primary]; ok && !p.cfg.bugs.earlyAbortCleanup {
		keep := p.cfg.retention
		if row.State == resource.StateCommitted {
			keep = p.cfg.tombstones
		}
		if row.Age < keep {
			if t.Action == "" {
				t.Action, t.Reason = ActionWait, fmt.Sprintf("%s row kept for the retention period (%v)", row.State, keep)
			}
			return
		}
	}
	if p.cfg.dry {
		if t.Action == "" {
			t.Action, t.Reason = ActionCollect, "finished, retention passed: would delete the marker rows"
		}
		return
	}
	// Deleted in batches at the end of the scan: at one tombstone per
	// committed transaction, one statement per gtid would not keep up.
	t.collect = true
	if t.Action == "" {
		t.Action, t.Reason = ActionCollect, "finished, retention passed: marker rows deleted"
	}
}

// deleteRows deletes the gtid's rows at every participant but the
// primary, one at a time, and stops at the first failure.
func (p *planner) deleteRows() {
	t := &p.t
	for _, n := range t.Participants {
		if n == t.Primary || !p.reachable(n) {
			continue
		}
		r, ok := p.do(action{Kind: actDeleteMarkers, Resource: n, GTID: t.GTID})
		if !ok {
			return
		}
		if r.Err != nil {
			t.Err = fmt.Errorf("deleting rows at %q: %w", n, r.Err)
			return
		}
	}
}

func allDone(bs []BranchReport) bool {
	for _, b := range bs {
		if !b.Done {
			return false
		}
	}
	return true
}

// collectBatch is one batched deletion: every row of GTIDs at Resource,
// for the transactions at Txs (indexes into the scan's reports).
type collectBatch struct {
	Resource string
	GTIDs    []string
	Txs      []int
}

// planCollect returns the batched deletions of one round for the
// transactions marked for collection: first (primaries false) at every
// participant but the primary, then at the primaries, so that a failure
// in the first round keeps the decision rows. One batch per resource, in
// name order.
func planCollect(txs []TxReport, primaries bool) []collectBatch {
	by := map[string][]int{} // resource -> indexes into txs
	for i := range txs {
		t := &txs[i]
		if !t.collect || t.Err != nil {
			continue
		}
		for _, p := range t.Participants {
			if (p == t.Primary) == primaries {
				by[p] = append(by[p], i)
			}
		}
	}
	var out []collectBatch
	for _, n := range slices.Sorted(maps.Keys(by)) {
		b := collectBatch{Resource: n, Txs: by[n]}
		for _, i := range by[n] {
			b.GTIDs = append(b.GTIDs, txs[i].GTID)
		}
		out = append(out, b)
	}
	return out
}

// collected records the failed deletions of a round (errs[k] is batch
// k's): their rows are left to the next scan.
func collected(txs []TxReport, batches []collectBatch, errs []error) {
	for k, err := range errs {
		if err == nil {
			continue
		}
		for _, i := range batches[k].Txs {
			txs[i].Err = fmt.Errorf("deleting rows at %q: %w", batches[k].Resource, err)
		}
	}
}

// gathered is what a scan read, grouped by global transaction.
type gathered struct {
	Txs         []*txFacts // in gtid (age) order
	Unreachable map[string]error
	Foreign     int // prepared branches of other namespaces
}

// gather groups what the scan read from the resources names (fs[i] from
// names[i]) by global transaction, keeping only the namespace space.
// Ages are measured at now.
func gather(names []string, fs []found, space string, now time.Time) gathered {
	g := gathered{Unreachable: map[string]error{}}
	txs := map[string]*txFacts{}
	get := func(gtid string) *txFacts {
		t, ok := txs[gtid]
		if !ok {
			t = &txFacts{GTID: gtid, Markers: map[string]resource.Marker{}, Age: now.Sub(resource.GTIDTime(gtid))}
			txs[gtid] = t
		}
		return t
	}
	for i, n := range names {
		if fs[i].err != nil {
			g.Unreachable[n] = fs[i].err
			continue
		}
		for _, m := range fs[i].markers {
			if !ours(m.Space, space) {
				continue
			}
			t := get(m.GTID)
			t.Markers[n] = m
			t.Primary = m.Primary
		}
		for _, pb := range fs[i].prepared {
			if pb.XID.Space != space {
				g.Foreign++
				continue
			}
			t := get(pb.XID.GTID)
			t.Primary = pb.XID.Primary
			t.Branches = append(t.Branches, BranchReport{Resource: n, XID: pb.XID, PreparedAt: pb.PreparedAt})
		}
	}
	for _, gtid := range slices.Sorted(maps.Keys(txs)) {
		t := txs[gtid]
		t.Participants = participants(t)
		g.Txs = append(g.Txs, t)
	}
	return g
}

func participants(t *txFacts) []string {
	set := map[string]bool{}
	for _, m := range t.Markers {
		for _, p := range m.Participants {
			set[p] = true
		}
	}
	for _, b := range t.Branches {
		set[b.Resource] = true
	}
	if t.Primary != "" {
		set[t.Primary] = true
	}
	return slices.Sorted(maps.Keys(set))
}

// ours reports whether a marker row's namespace tag is the scanner's
// (mine). Rows written before namespaces existed belong to the default
// one.
func ours(space, mine string) bool {
	return space == mine || space == "" && mine == resource.SpaceTag("")
}
