package bank

import (
	"sync"
	"time"

	"github.com/threepc/threepc/txmanager"
)

// PhaseTimes is how long one committed transaction spent in each phase of
// the protocol, measured between failpoints.
type PhaseTimes struct {
	Work      time.Duration // Begin to the first vote: the statements
	Prepare   time.Duration // the votes, in parallel
	Decide    time.Duration // the precommit row at the primary (the commit point)
	PreCommit time.Duration // 3PC: precommit rows at the other participants
	Commit    time.Duration // COMMIT PREPARED / XA COMMIT, in parallel
	Cleanup   time.Duration // deleting the marker rows
}

// PhaseNames are the phases in protocol order, as Slice returns them.
var PhaseNames = []string{"work", "prepare", "decide", "pre-commit", "commit", "cleanup"}

// Slice returns the phases in PhaseNames order.
func (p PhaseTimes) Slice() []time.Duration {
	return []time.Duration{p.Work, p.Prepare, p.Decide, p.PreCommit, p.Commit, p.Cleanup}
}

// phaseRecorder collects the first time each failpoint fired, per gtid.
// A failpoint hook sees every step of the protocol, which makes it a
// cheap, exact phase clock.
type phaseRecorder struct {
	mu sync.Mutex
	tx map[string]*stamps
}

type stamps struct {
	start time.Time
	at    map[txmanager.Failpoint]time.Time
}

func newPhaseRecorder() *phaseRecorder {
	return &phaseRecorder{tx: map[string]*stamps{}}
}

func (r *phaseRecorder) begin(gtid string, start time.Time) {
	r.mu.Lock()
	r.tx[gtid] = &stamps{start: start, at: make(map[txmanager.Failpoint]time.Time, 8)}
	r.mu.Unlock()
}

func (r *phaseRecorder) mark(gtid string, fp txmanager.Failpoint) {
	now := time.Now()
	r.mu.Lock()
	if s, ok := r.tx[gtid]; ok {
		if _, seen := s.at[fp]; !seen {
			s.at[fp] = now
		}
	}
	r.mu.Unlock()
}

// end removes the gtid's stamps and, for a committed two-phase
// transaction, returns its phases.
func (r *phaseRecorder) end(gtid string, committed bool) (PhaseTimes, bool) {
	r.mu.Lock()
	s, ok := r.tx[gtid]
	delete(r.tx, gtid)
	r.mu.Unlock()
	if !ok || !committed {
		return PhaseTimes{}, false
	}
	get := func(fp txmanager.Failpoint) (time.Time, bool) { t, ok := s.at[fp]; return t, ok }
	bp, ok1 := get(txmanager.BeforePrepare)
	bd, ok2 := get(txmanager.BeforeDecide)
	ad, ok3 := get(txmanager.AfterDecide)
	bc, ok4 := get(txmanager.BeforeCommit)
	bcl, ok5 := get(txmanager.BeforeCleanup)
	if !(ok1 && ok2 && ok3 && ok4 && ok5) {
		return PhaseTimes{}, false // one-phase or read-only: no protocol to time
	}
	p := PhaseTimes{
		Work:      bp.Sub(s.start),
		Prepare:   bd.Sub(bp),
		Decide:    ad.Sub(bd),
		PreCommit: bc.Sub(ad),
		Commit:    bcl.Sub(bc),
	}
	if acl, ok := get(txmanager.AfterCleanup); ok {
		p.Cleanup = acl.Sub(bcl)
	}
	return p, true
}
