// Package memres is an in-memory model of participant databases for
// exhaustive tests of the protocol: a World of databases holding branches,
// marker rows and evidence rows, processes (coordinators, recovery
// scanners) whose connections can be cut all at once by a crash, fault
// injection before and after every operation (including the faults real
// servers were caught at: a by-id commit that answers OK and commits
// nothing, a branch rolled back by an outside actor), server restarts,
// and a checker for the invariants of PROTOCOL.md and for the outcomes
// that processes report. It runs no SQL; database behaviour itself is
// tested against real servers.
//
// The model's drivers follow the weakest rules of the real ones (MariaDB):
// a commit on the session that prepared the branch is authoritative; a
// by-id commit's OK is not, so the driver reads the branch's evidence
// afterwards; a commit of a branch that is no longer prepared is nil only
// with evidence, else an error wrapping resource.ErrHeuristic.
package memres

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/threepc/threepc/internal/seeded"
	"github.com/threepc/threepc/internal/sqlerr"
	"github.com/threepc/threepc/resource"
)

// State is a branch's state in the model.
type State int

// Branch states.
const (
	Active State = iota
	Prepared
	Committed
	Aborted
	ReadOnly // voted read-only: finished with no effect
)

func (s State) String() string {
	return [...]string{"active", "prepared", "committed", "aborted", "read-only"}[s]
}

// Fault is what the fault hook injects into an operation.
type Fault int

// Faults.
const (
	NoFault Fault = iota
	// FailBefore: the operation fails with a connection error and has no
	// effect.
	FailBefore
	// FailAfter: the operation takes effect, then the connection fails:
	// the caller cannot know the outcome.
	FailAfter
	// Refuse: a prepare is refused (the branch rolls back); other
	// operations fail cleanly with no effect.
	Refuse
	// Orphan: a by-id commit (Op.Kind "commit-prepared") of a prepared
	// branch answers OK and commits nothing, as in MariaDB's hand-over
	// race: the branch stays prepared, holding its place, but is no longer
	// listed by Recover and is unknown to by-id operations until the
	// database restarts (World.Restart). On any other operation it is
	// NoFault.
	Orphan
	// OutsideRollback: before the operation runs (with no fault), an
	// outside actor (an operator's ROLLBACK PREPARED) rolls back the
	// operation's gtid's prepared branch at the operation's database, if
	// there is one (see World.RollbackOutside).
	OutsideRollback
)

func (f Fault) String() string {
	return [...]string{"none", "fail-before", "fail-after", "refuse", "orphan", "outside-rollback"}[f]
}

// Op describes one operation, for the fault hook and the trace.
type Op struct {
	Proc  string
	DB    string
	Kind  string // begin, exec, prepare, commit, rollback, one-phase, commit-with-marker, commit-prepared, rollback-prepared, read-evidence, recover, insert-marker, insert-markers, read-marker, list-markers, tombstone, delete-markers, check
	GTID  string
	State resource.MarkerState // insert-marker, commit-with-marker; insert-markers: the first row's
	Rows  int                  // insert-markers: the batch's size
}

func (o Op) String() string {
	s := fmt.Sprintf("%s %s@%s", o.Proc, o.Kind, o.DB)
	if o.GTID != "" {
		s += " " + short(o.GTID)
	}
	if o.State != "" {
		s += " " + string(o.State)
	}
	if o.Rows > 0 {
		s += fmt.Sprintf(" (%d rows)", o.Rows)
	}
	return s
}

func short(gtid string) string {
	if len(gtid) > 4 {
		return gtid[len(gtid)-4:]
	}
	return gtid
}

// World is a set of databases.
type World struct {
	mu    sync.Mutex
	dbs   map[string]*db
	clock *Clock
	// Fault, if set, is asked before every operation (with the world
	// unlocked: it may call the world's methods).
	Fault func(Op) Fault
	// AfterOp, if set, is called after every operation, with the world
	// unlocked (for invariant checks).
	AfterOp func(Op)
	// Trace records every operation, for failure messages.
	Trace []string

	// outside holds the gtids of which an outside actor rolled back a
	// prepared branch.
	outside map[string]bool
	claims  map[string][]claim
}

type db struct {
	name     string
	down     bool
	branches map[resource.XID]*fbranch // by key(xid)
	markers  map[string]resource.Marker
	evidence map[evKey]bool // visible evidence rows: of committed branches
	// history, for the checker
	everPreCommit     map[string]bool
	everAbort         map[string]bool
	decidedAfterFence map[string]bool // a precommit row went in after an abort row had been there
}

type evKey struct{ gtid, branch string }

type fbranch struct {
	xid   resource.XID
	state State
	wrote bool
	// evidence: the branch inserted its evidence row inside its own
	// transaction (Prepare, CommitWithMarker); it becomes visible when the
	// branch commits.
	evidence bool
	// attached: the session that began the branch is alive and holds it.
	attached bool
	proc     *Proc
	// orphan: a by-id commit answered OK and did nothing; the branch is
	// still prepared but invisible to Recover and to by-id operations
	// until a restart.
	orphan bool
	// wasOrphan: the branch was an orphan at some point (a heuristic
	// report of it stays justified after it reappears).
	wasOrphan bool
	// outside: rolled back by an outside actor.
	outside bool
}

// key is a branch's identity at a database: the session id is not part of
// it (resource.XID.SameBranch).
func key(x resource.XID) resource.XID {
	x.Session = 0
	return x
}

// NewWorld returns a world with the named databases.
func NewWorld(clock *Clock, names ...string) *World {
	w := &World{dbs: map[string]*db{}, clock: clock, outside: map[string]bool{}, claims: map[string][]claim{}}
	for _, n := range names {
		w.dbs[n] = &db{name: n, branches: map[resource.XID]*fbranch{}, markers: map[string]resource.Marker{},
			evidence:      map[evKey]bool{},
			everPreCommit: map[string]bool{}, everAbort: map[string]bool{}, decidedAfterFence: map[string]bool{}}
	}
	return w
}

// SetDown makes a database unreachable (or reachable again).
func (w *World) SetDown(name string, down bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.dbs[name].down = down
}

// Restart restarts a database server: every session on it ends (active
// branches roll back, prepared ones survive, detached), and orphans of
// the hand-over race become visible, finishable prepared branches again.
func (w *World) Restart(name string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	d := w.dbs[name]
	orphans := 0
	for _, b := range d.branches {
		b.attached = false
		if b.state == Active {
			b.state = Aborted
		}
		if b.orphan {
			b.orphan = false
			orphans++
		}
	}
	w.Trace = append(w.Trace, fmt.Sprintf("RESTART %s (%d orphans reappear)", name, orphans))
}

// RollbackOutside rolls back gtid's prepared branch at database name, as
// an operator's ROLLBACK PREPARED would (an orphan, invisible to the
// server's listing, cannot be): the checker then knows that the gtid's
// mixed outcome is a real heuristic one. It reports whether there was
// such a branch.
func (w *World) RollbackOutside(name, gtid string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.rollbackOutside(w.dbs[name], gtid)
}

func (w *World) rollbackOutside(d *db, gtid string) bool {
	for _, b := range d.branches {
		if b.xid.GTID == gtid && b.state == Prepared && !b.orphan {
			b.state, b.outside, b.attached = Aborted, true, false
			w.outside[gtid] = true
			w.Trace = append(w.Trace, fmt.Sprintf("OUTSIDE ROLLBACK %s@%s", short(gtid), d.name))
			return true
		}
	}
	return false
}

// Outside reports whether an outside actor rolled back a branch of gtid.
func (w *World) Outside(gtid string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.outside[gtid]
}

// Proc is a process with connections to the world's databases.
type Proc struct {
	w    *World
	name string
	dead bool
}

// NewProc returns a live process.
func (w *World) NewProc(name string) *Proc { return &Proc{w: w, name: name} }

// Name returns the process's name.
func (p *Proc) Name() string { return p.name }

// Crash kills the process: its connections close, so its active
// branches roll back; prepared ones survive. Every later operation of
// the process fails.
func (p *Proc) Crash() {
	p.w.mu.Lock()
	defer p.w.mu.Unlock()
	p.dead = true
	for _, d := range p.w.dbs {
		for _, b := range d.branches {
			if b.proc == p {
				b.attached = false
				if b.state == Active {
					b.state = Aborted
				}
			}
		}
	}
	p.w.Trace = append(p.w.Trace, p.name+" CRASH")
}

// Resource returns the process's handle on a database.
func (p *Proc) Resource(name string) resource.Resource { return &res{p: p, name: name} }

// Resources returns handles on every database, sorted by name.
func (p *Proc) Resources() []resource.Resource {
	names := make([]string, 0, len(p.w.dbs))
	for n := range p.w.dbs {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]resource.Resource, len(names))
	for i, n := range names {
		out[i] = p.Resource(n)
	}
	return out
}

var (
	errConn      = fmt.Errorf("%w: memres: connection lost", resource.ErrUnreachable)
	errRefused   = errors.New("memres: refused")
	errNoSession = fmt.Errorf("%w: memres: the branch's session is gone", resource.ErrUnreachable)
	// errNotPrepared is the server's "unknown branch" (42704, 1397) to a
	// by-id operation; the model driver resolves it with the evidence.
	errNotPrepared = errors.New("memres: no such prepared branch")
)

// do runs op under the world lock with fault injection: apply changes
// state and returns the operation's own result. It sees the fault, for
// the faults that change an operation's effect rather than its answer.
func (p *Proc) do(op Op, apply func(d *db, f Fault) error) error {
	w := p.w
	op.Proc = p.name
	fault := NoFault
	if w.Fault != nil {
		fault = w.Fault(op)
	}
	w.mu.Lock()
	d := w.dbs[op.DB]
	switch {
	case fault == OutsideRollback:
		w.rollbackOutside(d, op.GTID)
		fault = NoFault
	case fault == Orphan && op.Kind != "commit-prepared":
		fault = NoFault
	}
	var err error
	switch {
	case p.dead || d.down || fault == FailBefore:
		err = errConn
	case fault == Refuse:
		err = errRefused
	default:
		err = apply(d, fault)
		if fault == FailAfter {
			err = errConn
		}
	}
	line := fmt.Sprintf("%v -> %v", op, err)
	if fault != NoFault {
		line += " [" + fault.String() + "]"
	}
	w.Trace = append(w.Trace, line)
	w.mu.Unlock()
	if w.AfterOp != nil {
		w.AfterOp(op)
	}
	return err
}

func (d *db) commit(b *fbranch) {
	b.state = Committed
	if b.evidence {
		d.evidence[evKey{b.xid.GTID, b.xid.Branch}] = true
	}
}

type res struct {
	p    *Proc
	name string
}

func (r *res) Name() string   { return r.name }
func (r *res) System() string { return "memres" }
func (r *res) Check(context.Context) error {
	return r.p.do(Op{DB: r.name, Kind: "check"}, func(*db, Fault) error { return nil })
}

func (r *res) Begin(_ context.Context, xid resource.XID) (resource.Branch, error) {
	if err := xid.Validate(); err != nil {
		return nil, err
	}
	if xid.Branch != r.name {
		return nil, fmt.Errorf("%w: branch %q begun on %q", resource.ErrInvalidID, xid.Branch, r.name)
	}
	b := &fbranch{xid: xid, proc: r.p}
	err := r.p.do(Op{DB: r.name, Kind: "begin", GTID: xid.GTID}, func(d *db, _ Fault) error {
		if _, ok := d.branches[key(xid)]; ok {
			return resource.ErrBranchExists
		}
		b.attached = true
		d.branches[key(xid)] = b
		return nil
	})
	if err != nil {
		r.p.sessionLost(b, err)
		return nil, err
	}
	return &branchHandle{r: r, b: b}, nil
}

// sessionLost models a connection that broke under a branch: the server
// rolls back its active transaction; a prepared one survives, detached.
func (p *Proc) sessionLost(b *fbranch, err error) {
	if !errors.Is(err, resource.ErrUnreachable) {
		return
	}
	p.w.mu.Lock()
	defer p.w.mu.Unlock()
	b.attached = false
	if b.state == Active {
		b.state = Aborted
	}
}

// commitByID is the model driver's by-id commit: XA COMMIT <xid> from a
// pool connection, whose OK is not evidence, so the evidence row is read
// afterwards; a branch that is not prepared (any more) is committed only
// if its evidence is there.
func (r *res) commitByID(ctx context.Context, xid resource.XID) error {
	err := r.p.do(Op{DB: r.name, Kind: "commit-prepared", GTID: xid.GTID}, func(d *db, f Fault) error {
		b, ok := d.branches[key(xid)]
		if !ok || b.state != Prepared || b.orphan {
			return errNotPrepared
		}
		b.attached = false // the driver ends a session that still holds the branch
		if f == Orphan {
			b.orphan, b.wasOrphan = true, true
			r.p.w.Trace = append(r.p.w.Trace, fmt.Sprintf("ORPHAN %s@%s", short(xid.GTID), r.name))
			return nil
		}
		d.commit(b)
		return nil
	})
	switch {
	case err == nil:
		if seeded.TrustByIDCommit.Load() {
			return nil // the planted bug: an OK to a by-id commit taken for proof
		}
	case errors.Is(err, errNotPrepared):
		if seeded.AbsenceIsCommit.Load() {
			return nil // the planted bug: absence taken for success
		}
	default:
		return err
	}
	ok, rerr := r.Committed(ctx, xid)
	switch {
	case rerr != nil:
		return rerr
	case ok:
		return nil
	case err == nil:
		return fmt.Errorf("%w: memres: by-id commit of %v answered OK but its evidence is missing (an orphan of the hand-over race: restart the server, then run recovery)", resource.ErrHeuristic, xid)
	}
	return fmt.Errorf("%w: memres: branch %v is not prepared and its evidence is missing", resource.ErrHeuristic, xid)
}

// rollbackByID is the model driver's by-id rollback.
func (r *res) rollbackByID(ctx context.Context, xid resource.XID) error {
	err := r.p.do(Op{DB: r.name, Kind: "rollback-prepared", GTID: xid.GTID}, func(d *db, _ Fault) error {
		b, ok := d.branches[key(xid)]
		if !ok || b.state != Prepared || b.orphan {
			return errNotPrepared
		}
		b.state, b.attached = Aborted, false
		return nil
	})
	if !errors.Is(err, errNotPrepared) {
		return err
	}
	ok, rerr := r.Committed(ctx, xid)
	switch {
	case rerr != nil:
		return rerr
	case ok:
		return fmt.Errorf("%w: memres: rollback of %v, which committed", resource.ErrHeuristic, xid)
	}
	return fmt.Errorf("%w: memres: %v", resource.ErrUnknownBranch, xid)
}

func (r *res) CommitPrepared(ctx context.Context, xid resource.XID) error {
	return r.commitByID(ctx, xid)
}

func (r *res) RollbackPrepared(ctx context.Context, xid resource.XID) error {
	return r.rollbackByID(ctx, xid)
}

func (r *res) Recover(context.Context) ([]resource.PreparedBranch, error) {
	var out []resource.PreparedBranch
	err := r.p.do(Op{DB: r.name, Kind: "recover"}, func(d *db, _ Fault) error {
		for _, b := range d.branches {
			if b.state == Prepared && !b.orphan && b.xid.Branch == r.name {
				out = append(out, resource.PreparedBranch{XID: b.xid})
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b resource.PreparedBranch) int { return strings.Compare(a.XID.GTID, b.XID.GTID) })
	return out, nil
}

func (r *res) Committed(_ context.Context, xid resource.XID) (bool, error) {
	var ok bool
	err := r.p.do(Op{DB: r.name, Kind: "read-evidence", GTID: xid.GTID}, func(d *db, _ Fault) error {
		_, ok = d.evidence[evKey{xid.GTID, xid.Branch}]
		return nil
	})
	if err != nil {
		return false, err
	}
	return ok, nil
}

// insertMarker is the compare-and-set on the gtid (branch column empty).
func (w *World) insertMarker(d *db, m resource.Marker) error {
	if _, ok := d.markers[m.GTID]; ok {
		return resource.ErrMarkerExists
	}
	m.Participants = slices.Clone(m.Participants)
	m.CreatedAt = w.clock.Now()
	m.Age = 0
	d.markers[m.GTID] = m
	if m.State == resource.StatePreCommit {
		d.everPreCommit[m.GTID] = true
		if d.everAbort[m.GTID] {
			d.decidedAfterFence[m.GTID] = true
		}
	} else {
		d.everAbort[m.GTID] = true
	}
	return nil
}

func (r *res) InsertMarker(_ context.Context, m resource.Marker) error {
	if err := m.Validate(); err != nil {
		return err
	}
	return r.p.do(Op{DB: r.name, Kind: "insert-marker", GTID: m.GTID, State: m.State}, func(d *db, _ Fault) error {
		return r.p.w.insertMarker(d, m)
	})
}

// InsertMarkers is the batched insert (resource.MarkerBatcher): one
// atomic operation; a row already there is left as it is and its state
// returned.
func (r *res) InsertMarkers(_ context.Context, ms []resource.Marker) ([]resource.MarkerState, error) {
	seen := map[string]bool{}
	for _, m := range ms {
		if err := m.Validate(); err != nil {
			return nil, err
		}
		if seen[m.GTID] {
			return nil, fmt.Errorf("memres: gtid %s twice in one batch", m.GTID)
		}
		seen[m.GTID] = true
	}
	if len(ms) == 0 {
		return nil, nil
	}
	states := make([]resource.MarkerState, len(ms))
	err := r.p.do(Op{DB: r.name, Kind: "insert-markers", GTID: ms[0].GTID, State: ms[0].State, Rows: len(ms)}, func(d *db, _ Fault) error {
		for i, m := range ms {
			if row, ok := d.markers[m.GTID]; ok {
				states[i] = row.State
				continue
			}
			if err := r.p.w.insertMarker(d, m); err != nil {
				return err
			}
			states[i] = m.State
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return states, nil
}

// read returns a marker row as a reader sees it: its age by the
// database's clock.
func (w *World) read(m resource.Marker) resource.Marker {
	m.Participants = slices.Clone(m.Participants)
	m.Age = w.clock.Now().Sub(m.CreatedAt)
	return m
}

func (r *res) ReadMarker(_ context.Context, gtid string) (resource.Marker, error) {
	var m resource.Marker
	err := r.p.do(Op{DB: r.name, Kind: "read-marker", GTID: gtid}, func(d *db, _ Fault) error {
		row, ok := d.markers[gtid]
		if !ok {
			return fmt.Errorf("%w: %s", resource.ErrNoMarker, gtid)
		}
		m = r.p.w.read(row)
		return nil
	})
	if err != nil {
		return resource.Marker{}, err
	}
	return m, nil
}

func (r *res) ListMarkers(context.Context) ([]resource.Marker, error) {
	var out []resource.Marker
	err := r.p.do(Op{DB: r.name, Kind: "list-markers"}, func(d *db, _ Fault) error {
		for _, m := range d.markers {
			out = append(out, r.p.w.read(m))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b resource.Marker) int { return strings.Compare(a.GTID, b.GTID) })
	return out, nil
}

func (r *res) Tombstone(_ context.Context, gtids ...string) error {
	return r.p.do(Op{DB: r.name, Kind: "tombstone", GTID: strings.Join(gtids, ",")}, func(d *db, _ Fault) error {
		for _, g := range gtids {
			if m, ok := d.markers[g]; ok && m.State == resource.StatePreCommit {
				m.State = resource.StateCommitted
				d.markers[g] = m
			}
		}
		return nil
	})
}

func (r *res) DeleteMarkers(_ context.Context, gtids ...string) error {
	return r.p.do(Op{DB: r.name, Kind: "delete-markers", GTID: strings.Join(gtids, ",")}, func(d *db, _ Fault) error {
		for _, g := range gtids {
			delete(d.markers, g)
			for k := range d.evidence {
				if k.gtid == g {
					delete(d.evidence, k)
				}
			}
		}
		return nil
	})
}

type branchHandle struct {
	r *res
	b *fbranch
}

func (h *branchHandle) XID() resource.XID { return h.b.xid }

func (h *branchHandle) op(kind string) Op {
	return Op{DB: h.r.name, Kind: kind, GTID: h.b.xid.GTID}
}

// do runs a statement on the branch's session.
func (h *branchHandle) do(kind string, apply func(d *db, f Fault) error) error {
	err := h.r.p.do(h.op(kind), func(d *db, f Fault) error {
		if !h.b.attached {
			return errNoSession
		}
		return apply(d, f)
	})
	h.r.p.sessionLost(h.b, err)
	return err
}

// session reports whether the branch's session is alive, and the
// branch's state.
func (h *branchHandle) session() (bool, State) {
	h.r.p.w.mu.Lock()
	defer h.r.p.w.mu.Unlock()
	return h.b.attached && !h.r.p.dead, h.b.state
}

// ExecContext records a write; the model runs no SQL.
func (h *branchHandle) ExecContext(context.Context, string, ...any) (sql.Result, error) {
	err := h.do("exec", func(*db, Fault) error {
		if h.b.state != Active {
			return fmt.Errorf("memres: exec on a %v branch", h.b.state)
		}
		h.b.wrote = true
		return nil
	})
	if err != nil {
		return nil, err
	}
	return driver.RowsAffected(1), nil
}

var errNoSQL = errors.New("memres: no SQL in the model")

func (h *branchHandle) PrepareContext(context.Context, string) (*sql.Stmt, error) {
	return nil, errNoSQL
}

func (h *branchHandle) QueryContext(context.Context, string, ...any) (*sql.Rows, error) {
	return nil, errNoSQL
}

func (h *branchHandle) QueryRowContext(context.Context, string, ...any) *sql.Row {
	return sqlerr.Row(errNoSQL)
}

// Prepare inserts the branch's evidence row (if it wrote) and prepares
// it, in one round trip.
func (h *branchHandle) Prepare(context.Context) (resource.Vote, error) {
	vote := resource.VotePrepared
	err := h.do("prepare", func(*db, Fault) error {
		if h.b.state != Active {
			return fmt.Errorf("%w: %v", resource.ErrPrepareRefused, h.b.state)
		}
		if !h.b.wrote {
			h.b.state = ReadOnly
			vote = resource.VoteReadOnly
			return nil
		}
		h.b.state, h.b.evidence = Prepared, true
		return nil
	})
	if errors.Is(err, errRefused) {
		h.r.p.w.mu.Lock()
		h.b.state = Aborted
		h.r.p.w.mu.Unlock()
		return 0, fmt.Errorf("%w: injected", resource.ErrPrepareRefused)
	}
	if err != nil {
		return 0, err
	}
	return vote, nil
}

// Commit commits on the branch's session while it lives (authoritative),
// else by id.
func (h *branchHandle) Commit(ctx context.Context) error {
	if attached, _ := h.session(); !attached {
		return h.r.commitByID(ctx, h.b.xid)
	}
	err := h.do("commit", func(d *db, _ Fault) error {
		if h.b.state != Prepared || h.b.orphan {
			return errNotPrepared
		}
		d.commit(h.b)
		return nil
	})
	if errors.Is(err, errNoSession) {
		return h.r.commitByID(ctx, h.b.xid)
	}
	if !errors.Is(err, errNotPrepared) {
		return err
	}
	if seeded.AbsenceIsCommit.Load() {
		return nil
	}
	ok, rerr := h.r.Committed(ctx, h.b.xid)
	switch {
	case rerr != nil:
		return rerr
	case ok:
		return nil
	}
	return fmt.Errorf("%w: memres: branch %v is not prepared and its evidence is missing", resource.ErrHeuristic, h.b.xid)
}

func (h *branchHandle) CommitOnePhase(context.Context) error {
	return h.do("one-phase", func(d *db, _ Fault) error {
		if h.b.state != Active {
			return fmt.Errorf("memres: one-phase commit of a %v branch", h.b.state)
		}
		d.commit(h.b)
		return nil
	})
}

// CommitWithMarker inserts m and the branch's evidence row and commits
// the branch one-phase, as one atomic step (resource.MarkerCommitter).
func (h *branchHandle) CommitWithMarker(_ context.Context, m resource.Marker) error {
	if err := m.Validate(); err != nil {
		return err
	}
	op := h.op("commit-with-marker")
	op.State = m.State
	err := h.r.p.do(op, func(d *db, _ Fault) error {
		if !h.b.attached {
			return errNoSession
		}
		if h.b.state != Active {
			return fmt.Errorf("memres: commit-with-marker of a %v branch", h.b.state)
		}
		if err := h.r.p.w.insertMarker(d, m); err != nil {
			h.b.state = Aborted
			return err
		}
		h.b.evidence = true
		d.commit(h.b)
		return nil
	})
	h.r.p.sessionLost(h.b, err)
	return err
}

// Rollback rolls back on the branch's session while it lives, else by
// id.
func (h *branchHandle) Rollback(ctx context.Context) error {
	if attached, state := h.session(); !attached {
		if state == ReadOnly {
			return nil
		}
		return h.r.rollbackByID(ctx, h.b.xid)
	}
	err := h.do("rollback", func(*db, Fault) error {
		switch h.b.state {
		case Active, Prepared:
			h.b.state = Aborted
			return nil
		case ReadOnly, Aborted:
			return nil
		}
		return errNotPrepared
	})
	switch {
	case errors.Is(err, errNoSession):
		return h.r.rollbackByID(ctx, h.b.xid)
	case errors.Is(err, errNotPrepared):
		return fmt.Errorf("%w: memres: rollback of %v, which committed", resource.ErrHeuristic, h.b.xid)
	}
	return err
}

// Close drops the session: an active branch rolls back; a prepared one
// survives, detached.
func (h *branchHandle) Close() error {
	h.r.p.w.mu.Lock()
	defer h.r.p.w.mu.Unlock()
	if h.b.state == Active {
		h.b.state = Aborted
	}
	h.b.attached = false
	return nil
}

// Clock is a manual clock shared by the processes of a world.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a clock at start.
func NewClock(start time.Time) *Clock { return &Clock{now: start} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}
