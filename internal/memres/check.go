package memres

import (
	"fmt"
	"slices"

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
	rows     map[string]resource.MarkerState // db -> state
	decided  bool                            // a precommit row was ever inserted at the primary
	fenced   bool                            // an abort row was ever inserted at the primary
	late     bool                            // a precommit row went in at the primary after an abort row had been there
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
	for _, d := range w.dbs {
		for _, b := range d.branches {
			v := get(b.xid.GTID)
			v.primary = b.xid.Primary
			v.branches = append(v.branches, b)
		}
		for g, m := range d.markers {
			get(g).rows[d.name] = m.State
		}
	}
	for g, v := range vs {
		if v.primary == "" {
			continue
		}
		p := w.dbs[v.primary]
		v.decided = p.everPreCommit[g]
		v.fenced = p.everAbort[g]
		v.late = p.decidedAfterFence[g]
	}
	return vs
}

// CheckInvariants checks invariants 1 to 3 of PROTOCOL.md over every
// gtid, plus the uniqueness of the decision: no gtid is ever both decided
// (precommit at the primary) and fenced (abort at the primary).
func (w *World) CheckInvariants() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for g, v := range w.views() {
		var committed, aborted, unfinished bool
		for _, b := range v.branches {
			switch b.state {
			case Committed:
				committed = true
			case Aborted:
				aborted = aborted || b.wrote
			case Active:
				unfinished = true
			}
		}
		anyPreCommit := false
		for _, s := range v.rows {
			anyPreCommit = anyPreCommit || s == resource.StatePreCommit
		}
		preCommitted := anyPreCommit && slices.ContainsFunc(v.branches, func(b *fbranch) bool { return b.state == Prepared })
		if (committed || preCommitted) && aborted {
			return fmt.Errorf("gtid %s: invariant 1: a branch is committed or pre-committed and another aborted: %s", g, v)
		}
		if committed {
			allCommitted := true
			for _, b := range v.branches {
				if b.state != Committed && b.state != ReadOnly {
					allCommitted = false
				}
			}
			if unfinished || (!allCommitted && v.rows[v.primary] != resource.StatePreCommit) {
				return fmt.Errorf("gtid %s: invariant 2: a branch is committed without a precommit row at the primary while others are unfinished: %s", g, v)
			}
		}
		// A scanner whose branch listing is stale may fence a transaction
		// that is already committed everywhere and collected: that abort
		// row is a harmless tombstone. While any branch is unfinished, an
		// abort row at the primary must exclude every precommit row.
		if v.rows[v.primary] == resource.StateAbort && anyPreCommit && (unfinished || slices.ContainsFunc(v.branches, func(b *fbranch) bool { return b.state == Prepared })) {
			return fmt.Errorf("gtid %s: invariant 3: abort row at the primary beside a precommit row: %s", g, v)
		}
		if v.late {
			return fmt.Errorf("gtid %s: decision not unique: a precommit row went in at the primary after it had been fenced: %s", g, v)
		}
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

// CheckClean checks invariant 4: no branch left prepared (or active) and
// no marker row left, anywhere.
func (w *World) CheckClean() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, d := range w.dbs {
		for _, b := range d.branches {
			if b.state == Prepared || b.state == Active {
				return fmt.Errorf("invariant 4: branch %v left %v", b.xid, b.state)
			}
		}
		for g, m := range d.markers {
			return fmt.Errorf("invariant 4: marker row %s %s left at %s", g, m.State, d.name)
		}
	}
	return nil
}

func (v *gtidView) String() string {
	s := "branches["
	for i, b := range v.branches {
		if i > 0 {
			s += " "
		}
		s += fmt.Sprintf("%s:%v", b.xid.Branch, b.state)
		if !b.wrote {
			s += "(ro)"
		}
	}
	s += fmt.Sprintf("] rows%v primary=%s decided=%v fenced=%v", v.rows, v.primary, v.decided, v.fenced)
	return s
}
