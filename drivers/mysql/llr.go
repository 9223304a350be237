package mysql

import (
	"context"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/threepc/threepc/resource"
)

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
		b.state = stCommitted
		b.release()
		return nil
	}
	if isConnErr(err) || isCtxErr(err) {
		// Maybe committed (XA COMMIT may have been sent), maybe rolled
		// back with the session: the caller resolves it through the
		// marker table.
		b.state = stOnePhaseLost
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
		return fmt.Errorf("%w: %w", resource.ErrPrepareRefused, b.r.markerErr(what+" (rolled back)", err))
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
	b.state = stRolledBack
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
	at := make(map[string]int, len(ms))
	var sb strings.Builder
	sb.WriteString(markerInsert)
	for i, m := range ms {
		if err := m.Validate(); err != nil {
			return nil, fmt.Errorf("threepc/mysql: %w", err)
		}
		if _, dup := at[m.GTID]; dup {
			return nil, fmt.Errorf("threepc/mysql: insert markers: gtid %s twice in one batch", m.GTID)
		}
		at[m.GTID] = i
		if i > 0 {
			sb.WriteString(", ")
		}
		markerValues(&sb, m)
	}
	sb.WriteString(" ON DUPLICATE KEY UPDATE state = state RETURNING gtid, state")
	what := fmt.Sprintf("inserting %d markers", len(ms))
	rows, err := r.db.QueryContext(ctx, sb.String())
	if err != nil {
		return nil, r.markerErr(what, err)
	}
	defer rows.Close()
	states := make([]resource.MarkerState, len(ms))
	for rows.Next() {
		var gtid, state string
		if err := rows.Scan(&gtid, &state); err != nil {
			return nil, r.markerErr(what, err)
		}
		if i, ok := at[gtid]; ok {
			states[i] = resource.MarkerState(state)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, r.markerErr(what, err)
	}
	for i, s := range states {
		if s == "" {
			return nil, fmt.Errorf("threepc/mysql: %s: no state returned for %s: %w", what, ms[i].GTID, resource.ErrUnreachable)
		}
	}
	return states, nil
}
