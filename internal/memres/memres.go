// Package memres is an in-memory model of participant databases for
// exhaustive tests of the protocol: a World of databases holding branches
// and marker rows, processes (coordinators, recovery scanners) whose
// connections can be cut all at once by a crash, fault injection before
// and after every operation, and a checker for the invariants of
// PROTOCOL.md. It runs no SQL; database behaviour itself is tested against
// real servers.
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
)

// Op describes one operation, for the fault hook and the trace.
type Op struct {
	Proc  string
	DB    string
	Kind  string // begin, exec, prepare, commit, rollback, one-phase, commit-prepared, rollback-prepared, recover, insert-marker, read-marker, list-markers, delete-markers
	GTID  string
	State resource.MarkerState // insert-marker
}

func (o Op) String() string {
	s := fmt.Sprintf("%s %s@%s", o.Proc, o.Kind, o.DB)
	if o.GTID != "" {
		s += " " + o.GTID[len(o.GTID)-4:]
	}
	if o.State != "" {
		s += " " + string(o.State)
	}
	return s
}

// World is a set of databases.
type World struct {
	mu    sync.Mutex
	dbs   map[string]*db
	clock *Clock
	// Fault, if set, is asked before every operation.
	Fault func(Op) Fault
	// AfterOp, if set, is called after every operation, with the world
	// unlocked (for invariant checks).
	AfterOp func(Op)
	// Trace records every operation, for failure messages.
	Trace []string
}

type db struct {
	name     string
	down     bool
	branches map[resource.XID]*fbranch
	markers  map[string]resource.Marker
	// history, for the checker
	everPreCommit     map[string]bool
	everAbort         map[string]bool
	decidedAfterFence map[string]bool // a precommit row went in after an abort row had been there
}

type fbranch struct {
	xid   resource.XID
	state State
	wrote bool
	proc  *Proc // session holding an active branch
}

// NewWorld returns a world with the named databases.
func NewWorld(clock *Clock, names ...string) *World {
	w := &World{dbs: map[string]*db{}, clock: clock}
	for _, n := range names {
		w.dbs[n] = &db{name: n, branches: map[resource.XID]*fbranch{}, markers: map[string]resource.Marker{},
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
			if b.proc == p && b.state == Active {
				b.state = Aborted
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

var errConn = fmt.Errorf("%w: memres: connection lost", resource.ErrUnreachable)

// do runs op under the world lock with fault injection: apply changes
// state and returns the operation's own result.
func (p *Proc) do(op Op, apply func(d *db) error) error {
	w := p.w
	op.Proc = p.name
	fault := NoFault
	if w.Fault != nil {
		fault = w.Fault(op)
	}
	w.mu.Lock()
	d := w.dbs[op.DB]
	var err error
	switch {
	case p.dead || d.down || fault == FailBefore:
		err = errConn
	case fault == Refuse:
		err = errRefused
	default:
		err = apply(d)
		if fault == FailAfter {
			err = errConn
		}
	}
	w.Trace = append(w.Trace, fmt.Sprintf("%v -> %v", op, err))
	w.mu.Unlock()
	if w.AfterOp != nil {
		w.AfterOp(op)
	}
	return err
}

var errRefused = errors.New("memres: refused")

// sessionLost models a connection that broke under a branch: the server
// rolls back its active transaction; a prepared one survives.
func (p *Proc) sessionLost(b *fbranch, err error) {
	if !errors.Is(err, errConn) {
		return
	}
	p.w.mu.Lock()
	defer p.w.mu.Unlock()
	if b.state == Active {
		b.state = Aborted
	}
}

type res struct {
	p    *Proc
	name string
}

func (r *res) Name() string   { return r.name }
func (r *res) System() string { return "memres" }
func (r *res) DB() *sql.DB    { return nil }
func (r *res) Close() error   { return nil }
func (r *res) Check(context.Context) error {
	return r.p.do(Op{DB: r.name, Kind: "check"}, func(*db) error { return nil })
}

func (r *res) Begin(_ context.Context, xid resource.XID) (resource.Branch, error) {
	if err := xid.Validate(); err != nil {
		return nil, err
	}
	b := &fbranch{xid: xid, proc: r.p}
	err := r.p.do(Op{DB: r.name, Kind: "begin", GTID: xid.GTID}, func(d *db) error {
		if _, ok := d.branches[xid]; ok {
			return resource.ErrBranchExists
		}
		d.branches[xid] = b
		return nil
	})
	if err != nil {
		r.p.sessionLost(b, err)
		return nil, err
	}
	return &branchHandle{r: r, b: b}, nil
}

func (r *res) finishByID(kind string, xid resource.XID, to State) error {
	return r.p.do(Op{DB: r.name, Kind: kind, GTID: xid.GTID}, func(d *db) error {
		b, ok := d.branches[xid]
		if !ok || b.state != Prepared {
			return resource.ErrUnknownBranch
		}
		b.state = to
		return nil
	})
}

func (r *res) CommitPrepared(_ context.Context, xid resource.XID) error {
	return r.finishByID("commit-prepared", xid, Committed)
}

func (r *res) RollbackPrepared(_ context.Context, xid resource.XID) error {
	return r.finishByID("rollback-prepared", xid, Aborted)
}

func (r *res) Recover(context.Context) ([]resource.PreparedBranch, error) {
	var out []resource.PreparedBranch
	err := r.p.do(Op{DB: r.name, Kind: "recover"}, func(d *db) error {
		for _, b := range d.branches {
			if b.state == Prepared && b.xid.Branch == r.name {
				out = append(out, resource.PreparedBranch{XID: b.xid})
			}
		}
		return nil
	})
	slices.SortFunc(out, func(a, b resource.PreparedBranch) int { return strings.Compare(a.XID.GTID, b.XID.GTID) })
	return out, err
}

func (r *res) InsertMarker(_ context.Context, m resource.Marker) error {
	if err := m.Validate(); err != nil {
		return err
	}
	return r.p.do(Op{DB: r.name, Kind: "insert-marker", GTID: m.GTID, State: m.State}, func(d *db) error {
		if _, ok := d.markers[m.GTID]; ok {
			return resource.ErrMarkerExists
		}
		m.Participants = slices.Clone(m.Participants)
		m.CreatedAt = r.p.w.clock.Now()
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
	})
}

func (r *res) ReadMarker(_ context.Context, gtid string) (resource.Marker, error) {
	var m resource.Marker
	err := r.p.do(Op{DB: r.name, Kind: "read-marker", GTID: gtid}, func(d *db) error {
		var ok bool
		if m, ok = d.markers[gtid]; !ok {
			return resource.ErrNoMarker
		}
		return nil
	})
	return m, err
}

func (r *res) ListMarkers(context.Context) ([]resource.Marker, error) {
	var out []resource.Marker
	err := r.p.do(Op{DB: r.name, Kind: "list-markers"}, func(d *db) error {
		for _, m := range d.markers {
			out = append(out, m)
		}
		return nil
	})
	slices.SortFunc(out, func(a, b resource.Marker) int { return strings.Compare(a.GTID, b.GTID) })
	return out, err
}

func (r *res) DeleteMarkers(_ context.Context, gtids ...string) error {
	return r.p.do(Op{DB: r.name, Kind: "delete-markers", GTID: strings.Join(gtids, ",")}, func(d *db) error {
		for _, g := range gtids {
			delete(d.markers, g)
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

func (h *branchHandle) do(kind string, apply func(d *db) error) error {
	err := h.r.p.do(h.op(kind), apply)
	h.r.p.sessionLost(h.b, err)
	return err
}

// ExecContext records a write; the model runs no SQL.
func (h *branchHandle) ExecContext(context.Context, string, ...any) (sql.Result, error) {
	err := h.do("exec", func(*db) error {
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

func (h *branchHandle) Prepare(context.Context) (resource.Vote, error) {
	vote := resource.VotePrepared
	err := h.do("prepare", func(*db) error {
		if h.b.state != Active {
			return fmt.Errorf("%w: %v", resource.ErrPrepareRefused, h.b.state)
		}
		if !h.b.wrote {
			h.b.state = ReadOnly
			vote = resource.VoteReadOnly
			return nil
		}
		h.b.state = Prepared
		return nil
	})
	if errors.Is(err, errRefused) {
		h.r.p.w.mu.Lock()
		h.b.state = Aborted
		h.r.p.w.mu.Unlock()
		return 0, fmt.Errorf("%w: injected", resource.ErrPrepareRefused)
	}
	return vote, err
}

func (h *branchHandle) Commit(context.Context) error {
	return h.do("commit", func(*db) error {
		if h.b.state != Prepared {
			return resource.ErrUnknownBranch
		}
		h.b.state = Committed
		return nil
	})
}

func (h *branchHandle) CommitOnePhase(context.Context) error {
	return h.do("one-phase", func(*db) error {
		if h.b.state != Active {
			return fmt.Errorf("memres: one-phase commit of a %v branch", h.b.state)
		}
		h.b.state = Committed
		return nil
	})
}

// CommitWithMarker inserts m and commits the branch one-phase, as one
// atomic step (resource.MarkerCommitter).
func (h *branchHandle) CommitWithMarker(_ context.Context, m resource.Marker) error {
	if err := m.Validate(); err != nil {
		return err
	}
	op := h.op("commit-with-marker")
	op.State = m.State
	err := h.r.p.do(op, func(d *db) error {
		if h.b.state != Active {
			return fmt.Errorf("memres: commit-with-marker of a %v branch", h.b.state)
		}
		if _, ok := d.markers[m.GTID]; ok {
			h.b.state = Aborted
			return resource.ErrMarkerExists
		}
		m.Participants = slices.Clone(m.Participants)
		m.CreatedAt = h.r.p.w.clock.Now()
		d.markers[m.GTID] = m
		if m.State == resource.StatePreCommit {
			d.everPreCommit[m.GTID] = true
			if d.everAbort[m.GTID] {
				d.decidedAfterFence[m.GTID] = true
			}
		}
		h.b.state = Committed
		return nil
	})
	h.r.p.sessionLost(h.b, err)
	return err
}

func (h *branchHandle) Rollback(context.Context) error {
	return h.do("rollback", func(*db) error {
		switch h.b.state {
		case Active, Prepared:
			h.b.state = Aborted
			return nil
		case ReadOnly:
			return nil
		}
		return resource.ErrUnknownBranch
	})
}

// Close drops the session: an active branch rolls back.
func (h *branchHandle) Close() error {
	h.r.p.w.mu.Lock()
	defer h.r.p.w.mu.Unlock()
	if h.b.state == Active {
		h.b.state = Aborted
	}
	h.b.proc = nil
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
