package telemetry

import (
	"context"

	"github.com/threepc/threepc/resource"
)

// Resource is a resource.Resource whose protocol calls are CLIENT spans
// ("threepc.branch.<operation>") under the span in the call's context,
// as otelsql wraps a driver.Conn: the coordinator and the scanner call
// the database through it and write no span of their own for a call.
// Name, System, DB, Check and Close pass through. A call whose context's
// span does not record (an unsampled transaction, or tracing off) starts
// no span and allocates nothing.
type Resource struct {
	resource.Resource
	b       *base
	batcher resource.MarkerBatcher // nil when the driver cannot batch
}

// Wrap returns r instrumented by the coordinator's tracer; a nil
// Coordinator's wrapper starts no spans.
func (c *Coordinator) Wrap(r resource.Resource) *Resource {
	if c == nil {
		return (*base)(nil).wrap(r)
	}
	return c.base.wrap(r)
}

// Wrap returns r instrumented by the scanner's tracer; a nil Scanner's
// wrapper starts no spans.
func (s *Scanner) Wrap(r resource.Resource) *Resource {
	if s == nil {
		return (*base)(nil).wrap(r)
	}
	return s.base.wrap(r)
}

func (b *base) wrap(r resource.Resource) *Resource {
	t := &Resource{Resource: r, b: b}
	t.batcher, _ = r.(resource.MarkerBatcher)
	return t
}

// Unwrap returns the driver's resource.
func (t *Resource) Unwrap() resource.Resource { return t.Resource }

// call runs f, a call of op, under op's span.
func (t *Resource) call(ctx context.Context, op Operation, f func(ctx context.Context) error) error {
	ctx, span := t.b.startOp(ctx, op, t.Resource)
	err := f(ctx)
	span.End(err)
	return err
}

// Op starts the span of op on this resource for a call the caller makes
// itself: one logical operation of several calls (a commit and its
// retries by id), which the caller makes on the Unwrap'ped resource and
// branch so that they get no spans of their own.
func (t *Resource) Op(ctx context.Context, op Operation) (context.Context, OpSpan) {
	return t.b.startOp(ctx, op, t.Resource)
}

// BeginBranch begins a branch (span "begin") and returns it
// instrumented, by value: the commit path holds it without an
// allocation.
func (t *Resource) BeginBranch(ctx context.Context, xid resource.XID) (Branch, error) {
	octx, span := t.b.startOp(ctx, OpBegin, t.Resource)
	rb, err := t.Resource.Begin(octx, xid)
	span.End(err)
	if err != nil {
		return Branch{}, err
	}
	return Branch{Branch: rb, r: t}, nil
}

// Begin is BeginBranch for the resource.Resource interface.
func (t *Resource) Begin(ctx context.Context, xid resource.XID) (resource.Branch, error) {
	b, err := t.BeginBranch(ctx, xid)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// CommitPrepared commits a prepared branch by id (span "commit_prepared").
func (t *Resource) CommitPrepared(ctx context.Context, xid resource.XID) error {
	return t.call(ctx, OpCommitPrepared, func(ctx context.Context) error { return t.Resource.CommitPrepared(ctx, xid) })
}

// RollbackPrepared rolls back a prepared branch by id (span
// "rollback_prepared").
func (t *Resource) RollbackPrepared(ctx context.Context, xid resource.XID) error {
	return t.call(ctx, OpRollbackPrepared, func(ctx context.Context) error { return t.Resource.RollbackPrepared(ctx, xid) })
}

// Recover lists the prepared branches (span "recover").
func (t *Resource) Recover(ctx context.Context) (bs []resource.PreparedBranch, err error) {
	err = t.call(ctx, OpRecover, func(ctx context.Context) error {
		bs, err = t.Resource.Recover(ctx)
		return err
	})
	return bs, err
}

// Committed reads a branch's evidence (span "committed").
func (t *Resource) Committed(ctx context.Context, xid resource.XID) (ok bool, err error) {
	err = t.call(ctx, OpCommitted, func(ctx context.Context) error {
		ok, err = t.Resource.Committed(ctx, xid)
		return err
	})
	return ok, err
}

// InsertMarker inserts a marker row (span "insert_marker").
func (t *Resource) InsertMarker(ctx context.Context, m resource.Marker) error {
	return t.call(ctx, OpInsertMarker, func(ctx context.Context) error { return t.Resource.InsertMarker(ctx, m) })
}

// ReadMarker reads a marker row (span "read_marker").
func (t *Resource) ReadMarker(ctx context.Context, gtid string) (m resource.Marker, err error) {
	err = t.call(ctx, OpReadMarker, func(ctx context.Context) error {
		m, err = t.Resource.ReadMarker(ctx, gtid)
		return err
	})
	return m, err
}

// ListMarkers lists the marker rows (span "list_markers").
func (t *Resource) ListMarkers(ctx context.Context) (ms []resource.Marker, err error) {
	err = t.call(ctx, OpListMarkers, func(ctx context.Context) error {
		ms, err = t.Resource.ListMarkers(ctx)
		return err
	})
	return ms, err
}

// Tombstone turns decision rows into committed tombstones (span
// "tombstone").
func (t *Resource) Tombstone(ctx context.Context, gtids ...string) error {
	return t.call(ctx, OpTombstone, func(ctx context.Context) error { return t.Resource.Tombstone(ctx, gtids...) })
}

// DeleteMarkers deletes marker rows (span "delete_markers").
func (t *Resource) DeleteMarkers(ctx context.Context, gtids ...string) error {
	return t.call(ctx, OpDeleteMarkers, func(ctx context.Context) error { return t.Resource.DeleteMarkers(ctx, gtids...) })
}

// CanBatch reports whether the driver implements resource.MarkerBatcher.
func (t *Resource) CanBatch() bool { return t.batcher != nil }

// InsertMarkers inserts a batch of marker rows (span "insert_markers").
// Only for a resource that CanBatch.
func (t *Resource) InsertMarkers(ctx context.Context, ms []resource.Marker) (states []resource.MarkerState, err error) {
	err = t.call(ctx, OpInsertMarkers, func(ctx context.Context) error {
		states, err = t.batcher.InsertMarkers(ctx, ms)
		return err
	})
	return states, err
}

// Branch is a resource.Branch whose protocol calls are CLIENT spans;
// statements, XID and Close pass through to the driver's branch, which
// it embeds. The zero Branch is not usable.
type Branch struct {
	resource.Branch
	r *Resource
}

// Unwrap returns the driver's branch.
func (b Branch) Unwrap() resource.Branch { return b.Branch }

// Prepare votes (span "prepare", with the vote as threepc.vote).
func (b Branch) Prepare(ctx context.Context) (resource.Vote, error) {
	ctx, span := b.r.b.startOp(ctx, OpPrepare, b.r.Resource)
	v, err := b.Branch.Prepare(ctx)
	span.Vote(v)
	span.End(err)
	return v, err
}

// Commit commits the prepared branch on its connection (span "commit").
func (b Branch) Commit(ctx context.Context) error {
	return b.r.call(ctx, OpCommit, b.Branch.Commit)
}

// CommitOnePhase commits a branch that was never prepared (span
// "commit_one_phase").
func (b Branch) CommitOnePhase(ctx context.Context) error {
	return b.r.call(ctx, OpCommitOnePhase, b.Branch.CommitOnePhase)
}

// Rollback rolls the branch back (span "rollback").
func (b Branch) Rollback(ctx context.Context) error {
	return b.r.call(ctx, OpRollback, b.Branch.Rollback)
}

// CanCommitWithMarker reports whether the driver's branch implements
// resource.MarkerCommitter (logging last resource).
func (b Branch) CanCommitWithMarker() bool {
	_, ok := b.Branch.(resource.MarkerCommitter)
	return ok
}

// CommitWithMarker commits the branch one-phase with m inserted inside it
// (span "commit_with_marker"). Only for a branch that
// CanCommitWithMarker.
func (b Branch) CommitWithMarker(ctx context.Context, m resource.Marker) error {
	mc := b.Branch.(resource.MarkerCommitter)
	return b.r.call(ctx, OpCommitWithMarker, func(ctx context.Context) error { return mc.CommitWithMarker(ctx, m) })
}
