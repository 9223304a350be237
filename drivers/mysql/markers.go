package mysql

import (
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/threepc/threepc/resource"
)

// Committed reports whether the evidence row of the branch is visible: a
// plain (non-locking) read, which a prepared branch's lock on the row
// does not block.
func (r *Resource) Committed(ctx context.Context, xid resource.XID) (bool, error) {
	if err := r.checkXID(xid); err != nil {
		return false, err
	}
	var sb strings.Builder
	sb.WriteString("SELECT COUNT(*) FROM " + resource.MarkerTable + " WHERE gtid = ")
	hexLit(&sb, xid.GTID)
	sb.WriteString(" AND branch = ")
	hexLit(&sb, xid.Branch)
	var n int
	if err := r.db.QueryRowContext(ctx, sb.String()).Scan(&n); err != nil {
		return false, r.markerError("reading the evidence of "+xid.String(), err)
	}
	return n > 0, nil
}

// InsertMarker inserts a marker row; a row for the gtid already there
// fails with resource.ErrMarkerExists (1062 on the primary key).
func (r *Resource) InsertMarker(ctx context.Context, m resource.Marker) error {
	if err := m.Validate(); err != nil {
		return fmt.Errorf("threepc/mysql: %w", err)
	}
	_, err := r.db.ExecContext(ctx, insertMarkerSQL(m))
	if err == nil {
		return nil
	}
	if mysqlErrno(err) == erDupEntry {
		return wrap("marker of "+m.GTID, resource.ErrMarkerExists, err)
	}
	return r.markerError("inserting the marker of "+m.GTID, err)
}

// markerColumns are read by scanMarker. created_at is read as
// microseconds since the epoch, which does not depend on the session's
// time_zone nor on the driver's parseTime setting; the age is measured by
// the database's clock.
const markerColumns = "gtid, state, primary_name, participants, owner, space, CAST(UNIX_TIMESTAMP(created_at) * 1000000 AS SIGNED), TIMESTAMPDIFF(MICROSECOND, created_at, NOW(6))"

func scanMarker(s interface{ Scan(...any) error }) (resource.Marker, error) {
	var (
		m            resource.Marker
		state, parts string
		micros, age  int64
	)
	if err := s.Scan(&m.GTID, &state, &m.Primary, &parts, &m.Owner, &m.Space, &micros, &age); err != nil {
		return resource.Marker{}, err
	}
	m.State = resource.MarkerState(state)
	m.Participants = resource.SplitParticipants(parts)
	m.CreatedAt = time.UnixMicro(micros)
	m.Age = time.Duration(age) * time.Microsecond
	return m, nil
}

// ReadMarker reads the marker row of gtid (not its evidence rows), or
// fails with resource.ErrNoMarker.
func (r *Resource) ReadMarker(ctx context.Context, gtid string) (resource.Marker, error) {
	if err := resource.ValidateGTID(gtid); err != nil {
		return resource.Marker{}, fmt.Errorf("threepc/mysql: %w", err)
	}
	// A literal (validated above) instead of a bind parameter saves the
	// server-side prepare round trip.
	m, err := scanMarker(r.db.QueryRowContext(ctx, "SELECT "+markerColumns+" FROM "+resource.MarkerTable+" WHERE gtid = '"+gtid+"' AND branch = ''"))
	if errors.Is(err, sql.ErrNoRows) {
		return resource.Marker{}, fmt.Errorf("threepc/mysql: marker of %s: %w", gtid, resource.ErrNoMarker)
	}
	if err != nil {
		return resource.Marker{}, r.markerError("reading the marker of "+gtid, err)
	}
	return m, nil
}

// ListMarkers lists every marker row (not the evidence rows), ordered by
// gtid (so by age).
func (r *Resource) ListMarkers(ctx context.Context) ([]resource.Marker, error) {
	rows, err := r.db.QueryContext(ctx, "SELECT "+markerColumns+" FROM "+resource.MarkerTable+" WHERE branch = '' ORDER BY gtid")
	if err != nil {
		return nil, r.markerError("listing markers", err)
	}
	defer rows.Close()
	var out []resource.Marker
	for rows.Next() {
		m, err := scanMarker(rows)
		if err != nil {
			return nil, r.markerError("listing markers", err)
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, r.markerError("listing markers", err)
	}
	return out, nil
}

// deleteBatch bounds the literals of one statement.
const deleteBatch = 500

// gtidBatches validates gtids and calls f with each batch written as a
// list of literals: one round trip per batch instead of a server-side
// prepare and execute. ValidateGTID restricts gtids to Crockford base32.
func gtidBatches(gtids []string, f func(list string) error) error {
	for _, g := range gtids {
		if err := resource.ValidateGTID(g); err != nil {
			return fmt.Errorf("threepc/mysql: %w", err)
		}
	}
	for len(gtids) > 0 {
		n := min(len(gtids), deleteBatch)
		var q strings.Builder
		q.Grow(n * (resource.GTIDLen + 4))
		for i, g := range gtids[:n] {
			if i > 0 {
				q.WriteString(", ")
			}
			q.WriteString("'" + g + "'")
		}
		if err := f(q.String()); err != nil {
			return err
		}
		gtids = gtids[n:]
	}
	return nil
}

// Tombstone turns the precommit marker rows of gtids into committed
// tombstones, one statement per batch.
func (r *Resource) Tombstone(ctx context.Context, gtids ...string) error {
	return gtidBatches(gtids, func(list string) error {
		err := r.execReadCommitted(ctx, "UPDATE "+resource.MarkerTable+" SET state = '"+string(resource.StateCommitted)+
			"' WHERE branch = '' AND state = '"+string(resource.StatePreCommit)+"' AND gtid IN ("+list+")")
		if err != nil {
			return r.markerError("writing tombstones", err)
		}
		return nil
	})
}

// DeleteMarkers deletes the rows of gtids (markers, tombstones and this
// resource's evidence rows), one statement per batch; missing rows are
// not an error.
func (r *Resource) DeleteMarkers(ctx context.Context, gtids ...string) error {
	return gtidBatches(gtids, func(list string) error {
		// The full primary key of each row (marker row, this resource's
		// evidence row), not a gtid prefix, and READ COMMITTED: see
		// execReadCommitted.
		if err := r.execReadCommitted(ctx, "DELETE FROM "+resource.MarkerTable+" WHERE gtid IN ("+list+") AND branch IN ('', '"+r.name+"')"); err != nil {
			return r.markerError("deleting markers", err)
		}
		return nil
	})
}

// execReadCommitted runs a clean-up statement on the marker table at
// READ COMMITTED. Under REPEATABLE READ, InnoDB takes next-key locks on
// what such an UPDATE or DELETE scans, and it was seen (under load, on
// MariaDB 10.11) to wait on the uncommitted evidence row of a prepared
// branch while that branch's coordinator waited on the clean-up's gap
// locks to insert its own marker row: a lock chain across the protocol
// that only timeouts broke. READ COMMITTED takes no gap locks, and its
// semi-consistent reads skip rows that other transactions hold and that
// do not match. SET TRANSACTION applies to the next transaction only: the
// statement itself. One round trip where the pool takes several
// statements; otherwise two, on one connection, discarded if the second
// did not run (it must not carry the setting to someone else's
// transaction).
func (r *Resource) execReadCommitted(ctx context.Context, stmt string) error {
	const rc = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED"
	conn, err := r.db.Conn(ctx)
	if err != nil {
		return err
	}
	if r.multi.Load() != multiOff {
		_, err := conn.ExecContext(ctx, rc+"; "+stmt)
		switch {
		case err == nil:
			r.multi.CompareAndSwap(multiUnknown, multiOn)
			return conn.Close()
		case mysqlErrno(err) != erParse || r.multi.Load() == multiOn:
			discard(conn)
			return err
		}
		r.multi.Store(multiOff)
	}
	if _, err := conn.ExecContext(ctx, rc); err != nil {
		discard(conn)
		return err
	}
	if _, err := conn.ExecContext(ctx, stmt); err != nil {
		discard(conn)
		return err
	}
	return conn.Close()
}

// markerError maps errors of statements on the marker table.
func (r *Resource) markerError(what string, err error) error {
	switch mysqlErrno(err) {
	case erNoSuchTable:
		return wrap(what+": table "+resource.MarkerTable+" does not exist; run the threepc migrations (package migrations, DialectMySQL, or `threepc migrate`)", resource.ErrMarkerTableMissing, err)
	case erBadField:
		return wrap(what+": table "+resource.MarkerTable+" predates migration 2 (no branch and space columns for evidence rows and namespaces); run the threepc migrations (package migrations, DialectMySQL, or `threepc migrate`)", resource.ErrMarkerTableMissing, err)
	}
	return r.unreachable(what, err)
}

var _ resource.MarkerCommitter = (*Branch)(nil)

// markerInsert starts an INSERT into the marker table; markerValues and
// evidenceValues write its rows. go-sql-driver sends a statement with bind
// parameters as COM_STMT_PREPARE + COM_STMT_EXECUTE (two round trips,
// unless the DSN sets interpolateParams); the literal form costs one. The
// values are validated first (Marker.Validate, XID.Validate); every text
// value is a hexadecimal literal, which needs no escaping whatever the
// sql_mode or charset.
const markerInsert = "INSERT INTO " + resource.MarkerTable + " (gtid, branch, state, primary_name, participants, owner, space) VALUES "

// insertMarkerSQL returns the INSERT of marker m.
func insertMarkerSQL(m resource.Marker) string {
	var sb strings.Builder
	sb.WriteString(markerInsert)
	markerValues(&sb, m)
	return sb.String()
}

// markerValues writes the row of marker m: branch ”.
func markerValues(sb *strings.Builder, m resource.Marker) {
	sb.Grow(64 + 2*(len(m.GTID)+len(m.Primary)+len(m.Owner)) + 2*len(m.Participants)*16)
	sb.WriteString("(")
	hexLit(sb, m.GTID)
	sb.WriteString(", '', ")
	hexLit(sb, string(m.State))
	sb.WriteString(", ")
	hexLit(sb, m.Primary)
	sb.WriteString(", ")
	hexLit(sb, resource.JoinParticipants(m.Participants))
	sb.WriteString(", ")
	hexLit(sb, m.Owner)
	sb.WriteString(", ")
	hexLit(sb, m.Space)
	sb.WriteString(")")
}

// evidenceValues writes the evidence row of branch x (resource.EvidenceState).
func evidenceValues(sb *strings.Builder, x resource.XID) {
	sb.WriteString("(")
	hexLit(sb, x.GTID)
	sb.WriteString(", ")
	hexLit(sb, x.Branch)
	sb.WriteString(", '" + resource.EvidenceState + "', ")
	hexLit(sb, x.Primary)
	sb.WriteString(", '', '', ")
	hexLit(sb, x.Space)
	sb.WriteString(")")
}

// evidenceSQL returns the INSERT of the evidence row of branch x.
func evidenceSQL(x resource.XID) string {
	var sb strings.Builder
	sb.WriteString(markerInsert)
	evidenceValues(&sb, x)
	return sb.String()
}

// hexLit writes s as a hexadecimal string literal. An empty string is
// written as an empty quoted string rather than an empty hex literal (both
// are valid), which keeps the column's character set without a
// conversion.
func hexLit(sb *strings.Builder, s string) {
	if s == "" {
		sb.WriteString("''")
		return
	}
	var buf [64]byte
	sb.WriteString("X'")
	for len(s) > 0 {
		n := min(len(s), len(buf)/2)
		hex.Encode(buf[:2*n], []byte(s[:n]))
		sb.Write(buf[:2*n])
		s = s[n:]
	}
	sb.WriteString("'")
}

// CommitWithMarker commits the branch one-phase with the marker row m and
// the branch's evidence row inserted inside its XA transaction (the
// "logging last resource" optimization: this commit is the commit point):
// one multi-row INSERT, XA END, XA COMMIT ... ONE PHASE on the pinned
// connection, in one round trip where the connection takes several
// statements.
//
// A row for m.GTID already there (1062) ends the branch with XA END + XA
// ROLLBACK and returns an error wrapping resource.ErrMarkerExists. Any
// other refusal rolls the branch back and wraps resource.ErrPrepareRefused.
// A connection lost before XA COMMIT was sent leaves an unprepared XA that
// the server rolls back with its session; lost while XA COMMIT may be in
// flight, the outcome is unknown. Both wrap resource.ErrUnreachable: the
// marker table, whose primary key serialises this insert against any
// other for the gtid, tells the outcome.
func (b *Branch) CommitWithMarker(ctx context.Context, m resource.Marker) error {
	if err := m.Validate(); err != nil {
		return fmt.Errorf("threepc/mysql: commit of %s with marker: %w", b.xid, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	what := "commit of " + b.xid.String() + " with marker"
	if err := b.checkActive(what); err != nil {
		return err
	}
	if b.failed != nil {
		return fmt.Errorf("threepc/mysql: %s: %w: a statement of the branch failed: %w", what, resource.ErrPrepareRefused, withStatus(b.failed))
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("threepc/mysql: %s: %w", what, err)
	}
	var ins strings.Builder
	ins.WriteString(markerInsert)
	markerValues(&ins, m)
	ins.WriteString(", ")
	evidenceValues(&ins, b.xid)
	err := b.batch(ctx, ins.String(), "XA END "+b.lit, "XA COMMIT "+b.lit+" ONE PHASE")
	if err == nil {
		b.state = stateCommitted
		b.release()
		return nil
	}
	if isConnError(err) || isCtxError(err) {
		// Maybe committed (XA COMMIT may have been sent), maybe rolled
		// back with the session: the caller resolves it through the
		// marker table.
		b.state = stateOnePhaseLost
		b.drop()
		return wrapConn(what+" (outcome unknown: resolve it through the marker table)", err)
	}
	// An error reply: nothing committed, and the statements after the
	// failing one did not run.
	b.rollbackUnprepared(ctx)
	switch mysqlErrno(err) {
	case erDupEntry:
		return wrap(what+" (rolled back)", resource.ErrMarkerExists, err)
	case erNoSuchTable, erBadField:
		return fmt.Errorf("%w: %w", resource.ErrPrepareRefused, b.r.markerError(what+" (rolled back)", err))
	}
	return wrap(what+" (rolled back)", resource.ErrPrepareRefused, err)
}

// rollbackUnprepared ends a branch that was never prepared after a failed
// statement: XA END (which fails when the branch is IDLE already or the
// server has made it rollback-only) and XA ROLLBACK; should that fail, the
// session is discarded, which rolls the XA back on the server. Callers
// hold mu.
func (b *Branch) rollbackUnprepared(ctx context.Context) {
	_ = b.exec(ctx, "XA END")
	b.state = stateRolledBack
	if err := b.exec(ctx, "XA ROLLBACK"); err != nil {
		b.drop()
		return
	}
	b.release()
}

// InsertMarkers inserts a batch of marker rows in one statement
// (resource.MarkerBatcher) and returns the state of each gtid's row
// afterwards. It needs MariaDB's INSERT ... RETURNING, which reports a
// duplicate's existing row when ON DUPLICATE KEY UPDATE leaves it as it
// is; MySQL has no RETURNING, so there it returns resource.ErrUnsupported
// and the coordinator inserts one row at a time.
func (r *Resource) InsertMarkers(ctx context.Context, ms []resource.Marker) ([]resource.MarkerState, error) {
	v, err := r.serverVersion(ctx)
	if err != nil {
		return nil, err
	}
	if v.system != "mariadb" {
		return nil, fmt.Errorf("threepc/mysql: batched marker inserts need MariaDB's INSERT ... RETURNING: %w", resource.ErrUnsupported)
	}
	at, err := resource.IndexBatch(ms)
	if err != nil {
		return nil, fmt.Errorf("threepc/mysql: insert markers: %w", err)
	}
	var sb strings.Builder
	sb.WriteString(markerInsert)
	for i, m := range ms {
		if i > 0 {
			sb.WriteString(", ")
		}
		markerValues(&sb, m)
	}
	sb.WriteString(" ON DUPLICATE KEY UPDATE state = state RETURNING gtid, state")
	what := fmt.Sprintf("inserting %d markers", len(ms))
	rows, err := r.db.QueryContext(ctx, sb.String())
	if err != nil {
		return nil, r.markerError(what, err)
	}
	states, err := resource.ScanBatchStates(rows, at)
	if err != nil {
		return nil, r.markerError(what, err)
	}
	for i, s := range states {
		if s == "" {
			return nil, fmt.Errorf("threepc/mysql: %s: no state returned for %s: %w", what, ms[i].GTID, resource.ErrUnreachable)
		}
	}
	return states, nil
}
