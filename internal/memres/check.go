package memres

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/threepc/threepc/resource"
)

// Outcome is the fate of one gtid's written branches.
type Outcome int

// Outcomes.
const (
	Unfinished Outcome = iota // some branch still active or prepared
	AllCommitted
	AllAborted
	Mixed
	Empty // no written branch
)

func (o Outcome) String() string {
	return [...]string{"unfinished", "all-committed", "all-aborted", "MIXED", "empty"}[o]
}

// gtidView is everything the world holds about one gtid.
type gtidView struct {
	primary  string
	branches []*fbranch
	rows     map[string]resource.MarkerState // db -> state of the marker row
	evidence []string                        // dbs holding an evidence row
	decided  bool                            // a precommit row was ever inserted at the primary
	fenced   bool                            // an abort row was ever inserted at the primary
	late     bool                            // a precommit row went in at the primary after an abort row had been there
	outside  bool                            // an outside actor rolled back one of its branches
}

func (w *World) views() map[string]*gtidView {
	vs := map[string]*gtidView{}
	get := func(g string) *gtidView {
		v, ok := vs[g]
		if !ok {
			v = &gtidView{rows: map[string]resource.MarkerState{}}
			vs[g] = v
		}
		return v
	}
	names := make([]string, 0, len(w.dbs))
	for n := range w.dbs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		d := w.dbs[n]
		for _, b := range d.branches {
			v := get(b.xid.GTID)
			v.primary = b.xid.Primary
			v.branches = append(v.branches, b)
		}
		for g, m := range d.markers {
			v := get(g)
			v.rows[d.name] = m.State
			if v.primary == "" {
				v.primary = m.Primary
			}
		}
		for k := range d.evidence {
			v := get(k.gtid)
			v.evidence = append(v.evidence, d.name)
		}
	}
	for g, v := range vs {
		slices.SortFunc(v.branches, func(a, b *fbranch) int { return strings.Compare(a.xid.Branch, b.xid.Branch) })
		sort.Strings(v.evidence)
		v.outside = w.outside[g]
		if v.primary == "" {
			continue
		}
		if p, ok := w.dbs[v.primary]; ok {
			v.decided = p.everPreCommit[g]
			v.fenced = p.everAbort[g]
			v.late = p.decidedAfterFence[g]
		}
	}
	return vs
}

// CheckInvariants checks invariants 1 to 3 of PROTOCOL.md over every
// gtid, the uniqueness of the decision (no gtid both decided and fenced at
// the primary, and no branch committed under an abort row at the
// primary), that a tombstone at the primary means every written branch
// committed, and the outcomes claimed so far (Claim) that must hold
// forever: an abort claim excludes any commit, later too.
//
// A branch rolled back by an outside actor (RollbackOutside) does not make
// its gtid mixed for invariant 1: that is a real heuristic outcome, which
// must then be reported as one (no commit claim for that gtid).
func (w *World) CheckInvariants() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	vs := w.views()
	for _, g := range sortedKeys(vs) {
		if err := w.checkGTID(g, vs[g]); err != nil {
			return err
		}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func (w *World) checkGTID(g string, v *gtidView) error {
	var committed, aborted, active, prepared, unproven bool
	for _, b := range v.branches {
		switch b.state {
		case Committed:
			committed = true
		case Aborted:
			aborted = aborted || b.wrote && !b.outside
			unproven = unproven || b.outside
		case Active:
			active = true
		case Prepared:
			prepared = true
			unproven = true
		}
	}
	anyDecision := false // a precommit row or a committed tombstone anywhere
	for _, s := range v.rows {
		anyDecision = anyDecision || s == resource.StatePreCommit || s == resource.StateCommitted
	}
	primaryRow := v.rows[v.primary]
	if (committed || anyDecision && prepared) && aborted {
		return fmt.Errorf("gtid %s: invariant 1: a branch is committed or pre-committed and another aborted: %s", g, v)
	}
	// unproven: prepared (orphans too), or rolled back outside; such a
	// branch still needs the decision row, which says what the others did.
	if committed && (active || unproven && primaryRow != resource.StatePreCommit && primaryRow != resource.StateCommitted) {
		return fmt.Errorf("gtid %s: invariant 2: a branch is committed while another is active, or not committed without a precommit row at the primary: %s", g, v)
	}
	if primaryRow == resource.StateAbort && anyDecision {
		return fmt.Errorf("gtid %s: invariant 3: abort row at the primary beside a precommit row: %s", g, v)
	}
	if v.fenced && committed {
		return fmt.Errorf("gtid %s: decision not unique: a branch committed although the primary was fenced (abort row): %s", g, v)
	}
	if v.late {
		return fmt.Errorf("gtid %s: decision not unique: a precommit row went in at the primary after it had been fenced: %s", g, v)
	}
	if primaryRow == resource.StateCommitted && (unproven || active || aborted) {
		return fmt.Errorf("gtid %s: tombstone at the primary (every branch proven committed) while a branch is not committed: %s", g, v)
	}
	for _, c := range w.claims[g] {
		switch {
		case c.what == ClaimAborted && committed:
			return fmt.Errorf("gtid %s: %s claimed %v, but a branch committed since: %s", g, c.who, c.what, v)
		case c.what == ClaimCommitted && v.outside:
			return fmt.Errorf("gtid %s: %s claimed %v, but a branch was rolled back outside: %s", g, c.who, c.what, v)
		}
	}
	return nil
}

// CheckNonBlocking checks 3PC's non-blocking property while the
// coordinator runs alone and nothing fails but a crash: once a branch
// other than the primary is committed, no other branch waits on the
// primary alone, that is, while another non-primary branch is still
// prepared, some non-primary participant holds a precommit row (or its
// tombstone), from which recovery commits without the primary.
func (w *World) CheckNonBlocking() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	vs := w.views()
	for _, g := range sortedKeys(vs) {
		v := vs[g]
		var committed, prepared bool
		for _, b := range v.branches {
			if b.xid.Branch == v.primary {
				continue
			}
			committed = committed || b.state == Committed
			prepared = prepared || b.state == Prepared
		}
		if !committed || !prepared {
			continue
		}
		held := false
		for db, s := range v.rows {
			held = held || db != v.primary && (s == resource.StatePreCommit || s == resource.StateCommitted)
		}
		if !held {
			return fmt.Errorf("gtid %s: 3PC blocking: a non-primary branch is committed while another is prepared and no participant but the primary holds a precommit row: %s", g, v)
		}
	}
	return nil
}

// Claim is an outcome that a process reports.
type Claim int

// Claims.
const (
	// ClaimCommitted: every written branch is committed (the coordinator's
	// nil; a scan that committed and proved every branch).
	ClaimCommitted Claim = iota + 1
	// ClaimAborted: no branch is committed, and none ever will be
	// (ErrAborted; a scan that fenced or rolled back).
	ClaimAborted
	// ClaimCommitPending: decided to commit; no branch is aborted (but
	// those an outside actor rolled back), and none ever will be
	// (ErrCommitPending).
	ClaimCommitPending
	// ClaimHeuristic: decided to commit, and some branch really lacks its
	// evidence: an orphan of the hand-over race, or rolled back by an
	// outside actor (ErrHeuristic; a scan's heuristic action).
	ClaimHeuristic
)

func (c Claim) String() string {
	return [...]string{"?", "committed", "aborted", "commit-pending", "heuristic"}[c]
}

type claim struct {
	who  string
	what Claim
}

// ErrWrongClaim is wrapped by Claim's errors.
var ErrWrongClaim = errors.New("memres: reported outcome is not the real one")

// Claim checks that what who reports about gtid is true now, and records
// it so that CheckInvariants keeps checking what must stay true. A wrong
// claim's error wraps ErrWrongClaim.
func (w *World) Claim(who, gtid string, what Claim) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.Trace = append(w.Trace, fmt.Sprintf("CLAIM %s %s %v", who, short(gtid), what))
	w.claims[gtid] = append(w.claims[gtid], claim{who, what})
	v, ok := w.views()[gtid]
	if !ok {
		v = &gtidView{rows: map[string]resource.MarkerState{}}
	}
	wrong := func(why string) error {
		return fmt.Errorf("%w: gtid %s: %s reports %v, but %s: %s", ErrWrongClaim, gtid, who, what, why, v)
	}
	switch what {
	case ClaimCommitted:
		for _, b := range v.branches {
			if b.wrote && (b.state != Committed || b.orphan) {
				return wrong(fmt.Sprintf("branch %s is %v", b.xid.Branch, b))
			}
		}
	case ClaimAborted:
		for _, b := range v.branches {
			if b.state == Committed {
				return wrong(fmt.Sprintf("branch %s committed", b.xid.Branch))
			}
		}
	case ClaimCommitPending, ClaimHeuristic:
		if !v.decided {
			return wrong("no precommit row ever went in at the primary")
		}
		lacking := false
		for _, b := range v.branches {
			if b.state == Aborted && b.wrote && !b.outside {
				return wrong(fmt.Sprintf("branch %s is aborted", b.xid.Branch))
			}
			// Seen gone without its evidence, even if a restart has
			// brought it back since: the report was true when made.
			lacking = lacking || b.orphan || b.wasOrphan || b.outside
		}
		if what == ClaimHeuristic && !lacking {
			return wrong("no branch lacks its evidence (none is an orphan or rolled back outside)")
		}
	default:
		return fmt.Errorf("memres: unknown claim %d", what)
	}
	return nil
}

// Outcome returns the fate of gtid's written branches.
func (w *World) Outcome(gtid string) Outcome {
	w.mu.Lock()
	defer w.mu.Unlock()
	v, ok := w.views()[gtid]
	if !ok {
		return Empty
	}
	return v.outcome()
}

func (v *gtidView) outcome() Outcome {
	var c, a, u int
	for _, b := range v.branches {
		if !b.wrote {
			continue
		}
		switch b.state {
		case Committed:
			c++
		case Aborted:
			a++
		default:
			u++
		}
	}
	switch {
	case c > 0 && a > 0:
		return Mixed
	case u > 0:
		return Unfinished
	case c > 0:
		return AllCommitted
	case a > 0:
		return AllAborted
	}
	return Empty
}

// CheckClean checks invariant 4 as it holds for a committed transaction
// before the retention period has passed: no branch left prepared
// (orphans included) or active, and no row left in any marker table but
// the primaries' committed tombstones, kept for their retention, beside
// the primary's own evidence row. (Abort rows are reported: a test that
// expects one checks for it.)
func (w *World) CheckClean() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.checkBranches(); err != nil {
		return err
	}
	vs := w.views()
	for _, n := range sortedKeys(w.dbs) {
		d := w.dbs[n]
		for _, g := range sortedKeys(d.markers) {
			m := d.markers[g]
			if m.State != resource.StateCommitted || m.Primary != d.name {
				return fmt.Errorf("invariant 4: marker row %s %s left at %s: %s", g, m.State, d.name, vs[g])
			}
		}
		for k := range d.evidence {
			if vs[k.gtid].primary != d.name || d.markers[k.gtid].State != resource.StateCommitted {
				return fmt.Errorf("invariant 4: evidence row of %s left at %s: %s", k.gtid, d.name, vs[k.gtid])
			}
		}
	}
	return nil
}

// CheckEmpty checks invariant 4 once the retention period has passed: no
// branch left prepared (orphans included) or active, and no row left in
// any marker table: no marker row, tombstone or evidence row.
func (w *World) CheckEmpty() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.checkEmpty(nil)
}

// CheckFinal is CheckEmpty for a world where outside actors rolled back
// branches: a gtid with such a branch may keep its rows, and must, as
// long as its outcome is mixed (the decision row at the primary says what
// the other branches did); every other gtid is all-committed or
// all-aborted, and clean.
func (w *World) CheckFinal() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	vs := w.views()
	for _, g := range sortedKeys(vs) {
		v := vs[g]
		out := v.outcome()
		switch {
		case out == Unfinished:
			return fmt.Errorf("gtid %s: unfinished: %s", g, v)
		case v.outside:
			if out == Mixed && v.rows[v.primary] != resource.StatePreCommit {
				return fmt.Errorf("gtid %s: heuristic outcome (a branch rolled back outside), but the decision row at the primary is gone: %s", g, v)
			}
		case out == Mixed:
			return fmt.Errorf("gtid %s: outcome %v: %s", g, out, v)
		}
	}
	return w.checkEmpty(w.outside)
}

func (w *World) checkBranches() error {
	for _, n := range sortedKeys(w.dbs) {
		for _, b := range w.dbs[n].branches {
			if b.state == Prepared || b.state == Active {
				what := b.state.String()
				if b.orphan {
					what = "prepared (an orphan)"
				}
				return fmt.Errorf("invariant 4: branch %v left %s", b.xid, what)
			}
		}
	}
	return nil
}

func (w *World) checkEmpty(except map[string]bool) error {
	if err := w.checkBranches(); err != nil {
		return err
	}
	vs := w.views()
	for _, n := range sortedKeys(w.dbs) {
		d := w.dbs[n]
		for _, g := range sortedKeys(d.markers) {
			if !except[g] {
				return fmt.Errorf("invariant 4: marker row %s %s left at %s: %s", g, d.markers[g].State, d.name, vs[g])
			}
		}
		for k := range d.evidence {
			if !except[k.gtid] {
				return fmt.Errorf("invariant 4: evidence row of %s left at %s: %s", k.gtid, d.name, vs[k.gtid])
			}
		}
	}
	return nil
}

func (b *fbranch) String() string {
	s := fmt.Sprintf("%s:%v", b.xid.Branch, b.state)
	if !b.wrote {
		s += "(ro)"
	}
	if b.orphan {
		s += "(orphan)"
	}
	if b.outside {
		s += "(outside)"
	}
	return s
}

func (v *gtidView) String() string {
	parts := make([]string, len(v.branches))
	for i, b := range v.branches {
		parts[i] = b.String()
	}
	return fmt.Sprintf("branches[%s] rows%v evidence%v primary=%s decided=%v fenced=%v",
		strings.Join(parts, " "), v.rows, v.evidence, v.primary, v.decided, v.fenced)
}
