package mysql

import (
	"context"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/threepc/threepc/resource"
)

var _ resource.MarkerCommitter = (*Branch)(nil)

// insertMarkerSQL returns the INSERT of marker m with its values written
// as literals. go-sql-driver sends a statement with bind parameters as
// COM_STMT_PREPARE + COM_STMT_EXECUTE (two round trips, unless the DSN sets
// interpolateParams); the literal form costs one. The values are
// validated by m.Validate first; every text value is a hexadecimal
// literal, which needs no escaping whatever the sql_mode or charset.
func insertMarkerSQL(m resource.Marker) string {
	var sb strings.Builder
	sb.Grow(160 + 2*(len(m.GTID)+len(m.Primary)+len(m.Owner)) + 2*len(m.Participants)*16)
	sb.WriteString("INSERT INTO " + resource.MarkerTable + " (gtid, state, primary_name, participants, owner) VALUES (")
	hexLit(&sb, m.GTID)
	sb.WriteString(", ")
	hexLit(&sb, string(m.State))
	sb.WriteString(", ")
	hexLit(&sb, m.Primary)
	sb.WriteString(", ")
	hexLit(&sb, resource.JoinParticipants(m.Participants))
	sb.WriteString(", ")
	hexLit(&sb, m.Owner)
	sb.WriteString(")")
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

// CommitWithMarker commits the branch one-phase with the marker row m
// inserted inside its XA transaction (the "logging last resource"
// optimization: this commit is the commit point): INSERT, XA END, XA
// COMMIT ... ONE PHASE on the pinned connection.
//
// A row for m.GTID already there (1062) ends the branch with XA END + XA
// ROLLBACK and returns an error wrapping resource.ErrMarkerExists. Any
// other refusal rolls the branch back and wraps resource.ErrPrepareRefused.
// A connection lost before XA COMMIT was sent leaves an unprepared XA that
// the server rolls back with its session; lost while XA COMMIT is in
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
		return fmt.Errorf("threepc/mysql: %s: %w: a statement of the branch failed: %w", what, resource.ErrPrepareRefused, b.failed)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("threepc/mysql: %s: %w", what, err)
	}
	if _, err := b.conn.ExecContext(ctx, insertMarkerSQL(m)); err != nil {
		if isConnErr(err) || isCtxErr(err) {
			// Not committed, and never will be: an unprepared XA dies
			// with its session. The caller still resolves it through the
			// marker table.
			b.state = stRolledBack
			b.drop()
			return wrapConn(what+" (the branch is rolled back with its session)", err)
		}
		b.rollbackUnprepared(ctx)
		if mysqlErrno(err) == erDupEntry {
			return wrap(what+" (rolled back)", resource.ErrMarkerExists, err)
		}
		return fmt.Errorf("%w: %w", resource.ErrPrepareRefused, b.r.markerErr(what+" (rolled back)", err))
	}
	if err := b.exec(ctx, "XA END"); err != nil {
		err = b.endFailed(what, err)
		if b.state == stRollbackOnly {
			b.rollbackUnprepared(ctx)
		}
		return err
	}
	if _, err := b.conn.ExecContext(ctx, "XA COMMIT "+b.lit+" ONE PHASE"); err != nil {
		err = b.onePhaseFailed(what, err, false)
		if b.state == stRollbackOnly {
			b.rollbackUnprepared(ctx)
		}
		return err
	}
	b.state = stCommitted
	b.release()
	return nil
}

// rollbackUnprepared ends a branch that was never prepared after a failed
// statement: XA END (which may fail when the server has already made the
// branch rollback-only) and XA ROLLBACK; should that fail, the session is
// discarded, which rolls the XA back on the server. Callers hold mu.
func (b *Branch) rollbackUnprepared(ctx context.Context) {
	if b.state == stActive {
		_ = b.exec(ctx, "XA END")
	}
	b.state = stRolledBack
	if err := b.exec(ctx, "XA ROLLBACK"); err != nil {
		b.drop()
		return
	}
	b.release()
}
