package bank

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

// hwBranch is one branch of a hand-written 2PC transaction.
type hwBranch struct {
	l        leg
	pg       bool
	id       string // PostgreSQL gid literal, or MySQL xid literal
	conn     *sql.Conn
	prepared bool
	// voting: the prepare was sent; without prepared its outcome is
	// unknown (a timeout, a broken connection), and the abort must
	// roll back by id too.
	voting bool
}

// handwritten is the two-phase commit sequence written by hand with
// database/sql and nothing else, the baseline of issue 7, as fast as
// plain database/sql allows it: work on a pinned connection per
// database, prepare every branch in parallel (MySQL's XA END and XA
// PREPARE in one round trip), one literal decision INSERT at the primary,
// commit every branch in parallel on its own session, and settle the
// marker rows in background batches.
//
// It borrows only the branch-id encoding and the marker table's layout
// from threepc, so that a run killed midway is finished by `threepc
// recover` like any other: that includes the evidence row each branch
// inserts before it prepares (recovery claims a commit only on it; sent
// with the leg's own statement, no extra round trip), the MySQL session
// id in the xid (so recovery waits for a dead session's hand-over), and
// the decision row kept as a tombstone.
func (w *Workload) handwritten(ctx context.Context, t transfer) error {
	legs := t.legs
	gtid := t.id
	primary := legs[0].res
	wctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
	defer cancel()
	bs := make([]*hwBranch, len(legs))
	defer func() {
		for _, b := range bs {
			if b != nil && b.conn != nil {
				_ = b.conn.Close()
			}
		}
	}()
	// Work: every leg on a pinned connection of its own.
	for i, l := range legs {
		bs[i] = &hwBranch{l: l, pg: w.dialect[l.res] == "postgres"}
	}
	if err := w.eachLeg(len(legs), func(i int) error {
		if phase, err := w.hwWork(wctx, t, i, bs[i], primary); err != nil {
			return &resource.BranchError{Resource: legs[i].res, Phase: phase, Err: err}
		}
		return nil
	}); err != nil {
		be := err.(*resource.BranchError) // eachLeg returns a leg's error as it is
		return w.hwAbort(ctx, gtid, bs, be.Resource, be.Phase, be.Err)
	}
	// Prepare, in parallel.
	errs := parallel(bs, func(b *hwBranch) error {
		b.voting = true
		if b.pg {
			// The work statement succeeded, so the transaction is not in
			// the failed state that turns PREPARE into a silent ROLLBACK.
			if _, err := b.conn.ExecContext(wctx, "PREPARE TRANSACTION "+b.id); err != nil {
				return err
			}
		} else if w.multi[b.l.res] {
			// One round trip for both, where the pool allows two
			// statements in one query.
			if _, err := b.conn.ExecContext(wctx, "XA END "+b.id+"; XA PREPARE "+b.id); err != nil {
				return err
			}
		} else {
			if _, err := b.conn.ExecContext(wctx, "XA END "+b.id); err != nil {
				return err
			}
			if _, err := b.conn.ExecContext(wctx, "XA PREPARE "+b.id); err != nil {
				return err
			}
		}
		b.prepared = true
		return nil
	})
	for i, err := range errs {
		if err != nil {
			return w.hwAbort(ctx, gtid, bs, bs[i].l.res, resource.PhasePrepare, err)
		}
	}
	// Decide: the row at the primary is the commit point. Every value is
	// a validated identifier, so the statement is a literal: one round
	// trip on MySQL too, where bind parameters cost a server-side prepare.
	participants := make([]string, 0, len(legs))
	for _, l := range legs {
		participants = append(participants, l.res)
	}
	slices.Sort(participants)
	if !validID(gtid) || !validID(primary) || !validID(resource.JoinParticipants(participants)) || !validID(w.space) {
		return w.hwAbort(ctx, gtid, bs, primary, resource.PhaseDecide, fmt.Errorf("threepc/bank: identifiers not fit for a literal"))
	}
	ins := "INSERT INTO " + resource.MarkerTable + " (gtid, state, primary_name, participants, owner, space) VALUES ('" +
		gtid + "', 'precommit', '" + primary + "', '" + resource.JoinParticipants(participants) + "', 'handwritten2pc', '" + w.space + "')"
	if _, err := resource.DBOf(w.byName[primary]).ExecContext(wctx, ins); err != nil {
		// A hand-written baseline does not re-read an unknown outcome;
		// the prepared branches are left to recovery in that case.
		if isConnErr(err) {
			return &txmanager.InDoubtError{GTID: gtid, Primary: primary, Err: err}
		}
		return w.hwAbort(ctx, gtid, bs, primary, resource.PhaseDecide, err)
	}
	// Commit, in parallel, whatever the caller's context says.
	cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), w.cfg.Timeout)
	defer ccancel()
	errs = parallel(bs, func(b *hwBranch) error {
		q := "COMMIT PREPARED " + b.id
		if !b.pg {
			q = "XA COMMIT " + b.id
		}
		_, err := b.conn.ExecContext(cctx, q)
		if err != nil {
			w.discard(b.conn)
		}
		return err
	})
	var pending []string
	for i, err := range errs {
		if err != nil {
			pending = append(pending, bs[i].l.res)
		}
	}
	if len(pending) > 0 {
		return &txmanager.CommitPendingError{GTID: gtid, Pending: pending, Err: errors.Join(errs...)}
	}
	// The decision row becomes a tombstone (recovery collects it after
	// the retention period), then the others' evidence rows go: in the
	// background, in batches, as the library's asynchronous clean-up
	// does. Recovery finishes whatever a failure there leaves.
	others := make([]string, 0, len(legs)-1)
	for _, l := range legs[1:] {
		others = append(others, l.res)
	}
	w.hwCleaner.add(hwCleanup{gtid: gtid, primary: primary, others: others})
	return nil
}

// hwWork begins leg i's branch on a connection of its own and runs the
// leg; a failure comes with the phase it happened in.
func (w *Workload) hwWork(ctx context.Context, t transfer, i int, b *hwBranch, primary string) (resource.Phase, error) {
	l := t.legs[i]
	xid := resource.XID{GTID: t.id, Primary: primary, Branch: l.res, Space: w.space}
	conn, err := resource.DBOf(w.byName[l.res]).Conn(ctx)
	if err != nil {
		return resource.PhaseBegin, err
	}
	b.conn = conn
	if b.pg {
		b.id = "'" + xid.PostgresGID() + "'"
	} else {
		if xid.Session, err = w.sessionID(ctx, conn); err != nil {
			return resource.PhaseBegin, err
		}
		gtrid, bqual, fid := xid.MySQL(w.dbTag[l.res])
		b.id = fmt.Sprintf("X'%x',X'%x',%d", gtrid, bqual, fid)
	}
	begin := "BEGIN"
	if !b.pg {
		begin = "XA START " + b.id
	}
	if _, err := conn.ExecContext(ctx, begin); err != nil {
		return resource.PhaseBegin, err
	}
	if err := w.execLeg(ctx, conn, t, i, &evidenceRow{gtid: t.id, primary: primary, space: w.space}); err != nil {
		return resource.PhaseWork, err
	}
	return "", nil
}

// hwAbort rolls every branch back and returns an AbortError.
func (w *Workload) hwAbort(ctx context.Context, gtid string, bs []*hwBranch, culprit string, phase resource.Phase, cause error) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.cfg.Timeout)
	defer cancel()
	parallel(bs, func(b *hwBranch) error {
		if b == nil || b.conn == nil {
			return nil
		}
		var err error
		switch {
		case b.pg && b.prepared:
			_, err = b.conn.ExecContext(rctx, "ROLLBACK PREPARED "+b.id)
		case b.pg:
			_, err = b.conn.ExecContext(rctx, "ROLLBACK")
		case b.prepared:
			_, err = b.conn.ExecContext(rctx, "XA ROLLBACK "+b.id)
		default:
			_, _ = b.conn.ExecContext(rctx, "XA END "+b.id)
			_, err = b.conn.ExecContext(rctx, "XA ROLLBACK "+b.id)
		}
		if err != nil {
			// Never hand a connection in a transaction or XA state back to
			// the pool; a prepared branch left behind is recovery's.
			w.discard(b.conn)
		}
		if b.pg && b.voting && !b.prepared {
			// The PREPARE's outcome is unknown: the branch may be
			// prepared, detached from the session. By id, from the pool;
			// "does not exist" (42704) means it was not.
			_, err = resource.DBOf(w.byName[b.l.res]).ExecContext(rctx, "ROLLBACK PREPARED "+b.id)
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.Code == "42704" {
				err = nil
			}
		}
		return err
	})
	return &txmanager.AbortError{GTID: gtid, Resource: culprit, Phase: phase, Err: cause}
}

// discard closes the pinned connection for good instead of returning it
// to the pool.
func (w *Workload) discard(c *sql.Conn) {
	_ = c.Raw(func(dc any) error {
		w.sessions.Delete(dc)
		return driver.ErrBadConn
	})
}

// sessionID returns the MySQL session id of a pinned connection, asked
// once per connection: the xid carries it so that recovery can end a
// stalled session and wait for the server to take its branch over.
func (w *Workload) sessionID(ctx context.Context, c *sql.Conn) (uint64, error) {
	var key any
	_ = c.Raw(func(dc any) error { key = dc; return nil })
	if v, ok := w.sessions.Load(key); ok {
		return v.(uint64), nil
	}
	var id uint64
	if err := c.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&id); err != nil {
		return 0, err
	}
	w.sessions.Store(key, id)
	return id, nil
}

func isConnErr(err error) bool {
	return errors.Is(err, driver.ErrBadConn) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.Is(err, sql.ErrConnDone)
}

func parallel(bs []*hwBranch, f func(b *hwBranch) error) []error {
	errs := make([]error, len(bs))
	var wg sync.WaitGroup
	for i, b := range bs {
		wg.Go(func() { errs[i] = f(b) })
	}
	wg.Wait()
	return errs
}

// hwCleanup is one committed hand-written transaction's marker rows.
type hwCleanup struct {
	gtid, primary string
	others        []string
}

// hwCleaner settles the hand-written baseline's marker rows in the
// background: per batch, one UPDATE at each primary turns the decision
// rows into tombstones, then one DELETE at each other database removes
// the evidence rows of the transactions whose tombstone is in.
type hwCleaner struct {
	w     *Workload
	queue chan hwCleanup
	done  chan struct{}
	once  sync.Once
}

func newHWCleaner(w *Workload) *hwCleaner {
	c := &hwCleaner{w: w, queue: make(chan hwCleanup, 4096), done: make(chan struct{})}
	go c.loop()
	return c
}

// add queues j; with the queue full the caller settles j itself.
func (c *hwCleaner) add(j hwCleanup) {
	select {
	case c.queue <- j:
	default:
		c.flush([]hwCleanup{j})
	}
}

func (c *hwCleaner) loop() {
	defer close(c.done)
	for j := range c.queue {
		batch := []hwCleanup{j}
	collect:
		for len(batch) < 256 {
			select {
			case j, ok := <-c.queue:
				if !ok {
					break collect
				}
				batch = append(batch, j)
			default:
				break collect
			}
		}
		c.flush(batch)
	}
}

func (c *hwCleaner) flush(batch []hwCleanup) {
	w := c.w
	ctx, cancel := context.WithTimeout(context.Background(), w.cfg.Timeout)
	defer cancel()
	byPrimary := map[string][]string{}
	for _, j := range batch {
		byPrimary[j.primary] = append(byPrimary[j.primary], "'"+j.gtid+"'")
	}
	settled := map[string]bool{}
	for primary, lits := range byPrimary {
		tomb := "UPDATE " + resource.MarkerTable + " SET state = '" + string(resource.StateCommitted) + "' WHERE branch = '' AND state = '" +
			string(resource.StatePreCommit) + "' AND gtid IN (" + strings.Join(lits, ", ") + ")"
		if err := c.exec(ctx, primary, tomb); err != nil {
			w.cfg.Logger.Info("threepc/bank: hand-written clean-up left to recovery", "resource", primary, "transactions", len(lits), "err", err)
			continue // recovery settles them
		}
		for _, j := range batch {
			if j.primary == primary {
				settled[j.gtid] = true
			}
		}
	}
	byOther := map[string][]string{}
	for _, j := range batch {
		if !settled[j.gtid] {
			continue
		}
		for _, o := range j.others {
			byOther[o] = append(byOther[o], "'"+j.gtid+"'")
		}
	}
	for other, lits := range byOther {
		del := "DELETE FROM " + resource.MarkerTable + " WHERE gtid IN (" + strings.Join(lits, ", ") + ")"
		if err := c.exec(ctx, other, del); err != nil {
			w.cfg.Logger.Info("threepc/bank: hand-written clean-up left to recovery", "resource", other, "transactions", len(lits), "err", err)
		}
	}
}

// exec runs a clean-up statement at res, retrying a failure twice (a
// broken pooled connection, a lock wait cut short) before leaving the
// rows to recovery.
func (c *hwCleaner) exec(ctx context.Context, res, q string) error {
	var err error
	for attempt := range 3 {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return errors.Join(err, ctx.Err())
			case <-time.After(time.Duration(attempt) * 50 * time.Millisecond):
			}
		}
		if _, err = resource.DBOf(c.w.byName[res]).ExecContext(ctx, q); err == nil {
			return nil
		}
	}
	return err
}

// close settles what is queued.
func (c *hwCleaner) close() {
	c.once.Do(func() { close(c.queue) })
	<-c.done
}
