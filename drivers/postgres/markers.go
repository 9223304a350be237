package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/threepc/threepc/resource"
)

// markerColumns are read by scanMarker. The age comes from the database's
// clock, so that retention does not depend on the reader's; it is clamped
// at 0 because a row inserted by a transaction that started after this
// statement's own start can be visible to it.
const markerColumns = "gtid, state, primary_name, participants, owner, space, created_at, " +
	"greatest(0, (extract(epoch FROM now() - created_at) * 1000000)::bigint)"

// markerRows restricts a query to marker rows: evidence rows carry their
// branch's name in the branch column.
const markerRows = "branch = ''"

// InsertMarker inserts m; created_at comes from the database's clock. The
// primary key on (gtid, branch) makes the insert a compare-and-set on the
// gtid's marker row: an existing row fails it with ErrMarkerExists. A
// connection error (ErrUnreachable) leaves the outcome unknown: read the
// marker back.
func (r *Resource) InsertMarker(ctx context.Context, m resource.Marker) error {
	if err := m.Validate(); err != nil {
		return fmt.Errorf("threepc/postgres: insert marker: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("threepc/postgres: insert marker %s: %w", m.GTID, err)
	}
	_, err := r.db.ExecContext(ctx, insertMarkerSQL,
		m.GTID, string(m.State), m.Primary, resource.JoinParticipants(m.Participants), m.Owner, m.Space)
	return r.markerError("insert marker "+m.GTID, err)
}

// ReadMarker reads the marker row of gtid, or returns ErrNoMarker.
func (r *Resource) ReadMarker(ctx context.Context, gtid string) (resource.Marker, error) {
	if err := resource.ValidateGTID(gtid); err != nil {
		return resource.Marker{}, fmt.Errorf("threepc/postgres: read marker: %w", err)
	}
	row := r.db.QueryRowContext(ctx,
		"SELECT "+markerColumns+" FROM "+resource.MarkerTable+" WHERE gtid = $1 AND "+markerRows, gtid)
	m, err := scanMarker(row)
	if errors.Is(err, sql.ErrNoRows) {
		return resource.Marker{}, fmt.Errorf("threepc/postgres: read marker %s: %w", gtid, resource.ErrNoMarker)
	}
	if err != nil {
		return resource.Marker{}, r.markerError("read marker "+gtid, err)
	}
	return m, nil
}

// ListMarkers lists every marker row, ordered by gtid (so by age).
func (r *Resource) ListMarkers(ctx context.Context) ([]resource.Marker, error) {
	rows, err := r.db.QueryContext(ctx, "SELECT "+markerColumns+" FROM "+resource.MarkerTable+" WHERE "+markerRows+" ORDER BY gtid")
	if err != nil {
		return nil, r.markerError("list markers", err)
	}
	defer rows.Close()
	var out []resource.Marker
	for rows.Next() {
		m, err := scanMarker(rows)
		if err != nil {
			return nil, r.markerError("list markers", err)
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, r.markerError("list markers", err)
	}
	return out, nil
}

// Tombstone turns the precommit marker rows of gtids into committed
// tombstones in one statement.
func (r *Resource) Tombstone(ctx context.Context, gtids ...string) error {
	if len(gtids) == 0 {
		return nil
	}
	_, err := r.db.ExecContext(ctx, "UPDATE "+resource.MarkerTable+
		" SET state = '"+string(resource.StateCommitted)+"' WHERE "+markerRows+
		" AND state = '"+string(resource.StatePreCommit)+"' AND gtid = ANY($1)", gtids)
	return r.markerError("tombstone markers", err)
}

// DeleteMarkers deletes every row of gtids (markers, tombstones and
// evidence) in one statement.
func (r *Resource) DeleteMarkers(ctx context.Context, gtids ...string) error {
	if len(gtids) == 0 {
		return nil
	}
	_, err := r.db.ExecContext(ctx, "DELETE FROM "+resource.MarkerTable+" WHERE gtid = ANY($1)", gtids)
	return r.markerError("delete markers", err)
}

// Committed reports whether the evidence row of xid is visible: Prepare
// and CommitWithMarker insert it inside the branch's own transaction.
func (r *Resource) Committed(ctx context.Context, xid resource.XID) (bool, error) {
	if err := r.checkXID(xid); err != nil {
		return false, err
	}
	var ok bool
	err := r.db.QueryRowContext(ctx, "SELECT EXISTS (SELECT 1 FROM "+resource.MarkerTable+
		" WHERE gtid = $1 AND branch = $2 AND state = '"+resource.EvidenceState+"')", xid.GTID, xid.Branch).Scan(&ok)
	if err != nil {
		return false, r.markerError("reading the evidence of "+xid.String(), err)
	}
	return ok, nil
}

func (r *Resource) markerError(what string, err error) error {
	err = mapError(opMarker, what, err)
	if errors.Is(err, resource.ErrMarkerTableMissing) {
		return fmt.Errorf("%w (run the migrations: `threepc migrate` or migrations.Up)", err)
	}
	return err
}

func scanMarker(s interface{ Scan(...any) error }) (resource.Marker, error) {
	var (
		m            resource.Marker
		state, parts string
		ageMicros    int64
	)
	if err := s.Scan(&m.GTID, &state, &m.Primary, &parts, &m.Owner, &m.Space, &m.CreatedAt, &ageMicros); err != nil {
		return resource.Marker{}, err
	}
	m.State = resource.MarkerState(state)
	m.Participants = resource.SplitParticipants(parts)
	m.Age = time.Duration(ageMicros) * time.Microsecond
	return m, nil
}

// insertMarkerSQL inserts a marker row; branch defaults to the empty string and
// created_at to the database's clock.
const insertMarkerSQL = "INSERT INTO " + resource.MarkerTable + " (gtid, state, primary_name, participants, owner, space) VALUES ($1, $2, $3, $4, $5, $6)"

// insertEvidenceSQL inserts a branch's evidence row: $1 gtid, $2 branch,
// $3 primary, $4 namespace tag.
const insertEvidenceSQL = "INSERT INTO " + resource.MarkerTable + " (gtid, branch, state, primary_name, participants, owner, space) VALUES ($1, $2, '" + resource.EvidenceState + "', $3, '', '', $4)"

// insertMarkerAndEvidenceSQL inserts the marker row and the branch's
// evidence row of a logging-last-resource commit in one statement: $1
// gtid, $2 state, $3 primary, $4 participants, $5 owner, $6 the marker's
// namespace tag, $7 branch, $8 the branch's namespace tag.
const insertMarkerAndEvidenceSQL = "INSERT INTO " + resource.MarkerTable + " (gtid, branch, state, primary_name, participants, owner, space) VALUES " +
	"($1, '', $2, $3, $4, $5, $6), ($1, $7, '" + resource.EvidenceState + "', $3, '', '', $8)"

// stmt is one statement of a pipeline; its arguments go as text.
type stmt struct {
	sql  string
	args []string
}

// pipeline sends stmts to the server in one round trip (extended
// protocol, unnamed statements, one Sync) and returns the command tags of
// the statements that completed. After a server error the server skips
// the rest, so len(tags) says which statement failed. Unnamed statements
// keep one-off SQL (a PREPARE TRANSACTION literal) out of pgx's statement
// cache, and a first use costs no extra round trip to prepare.
func pipeline(ctx context.Context, pc *pgconn.PgConn, stmts ...stmt) ([]pgconn.CommandTag, error) {
	batch := &pgconn.Batch{}
	for _, s := range stmts {
		vals := make([][]byte, len(s.args))
		for i, a := range s.args {
			vals[i] = []byte(a)
		}
		batch.ExecParams(s.sql, vals, nil, nil, nil)
	}
	results, err := pc.ExecBatch(ctx, batch).ReadAll()
	var tags []pgconn.CommandTag
	for _, res := range results {
		if res.Err != nil {
			return tags, res.Err
		}
		tags = append(tags, res.CommandTag)
	}
	return tags, err
}

var _ resource.MarkerCommitter = (*Branch)(nil)

// CommitWithMarker commits the branch one-phase with the marker row m
// inserted inside its transaction (the "logging last resource"
// optimization: this commit is the commit point), beside the branch's
// evidence row, in one INSERT. The INSERT and the COMMIT go to the server
// in one pipelined round trip; if the INSERT fails, the server skips the
// COMMIT and the driver rolls the transaction back.
//
// A row for m.GTID already there (23505) rolls the branch back and returns
// an error wrapping resource.ErrMarkerExists. Any other refusal rolls it
// back and wraps resource.ErrPrepareRefused. A connection lost while the
// statements are in flight wraps resource.ErrUnreachable: the outcome is
// unknown, and the marker table (whose primary key serialises this commit
// against any other insert for the gtid) tells it.
func (b *Branch) CommitWithMarker(ctx context.Context, m resource.Marker) error {
	if err := m.Validate(); err != nil {
		return fmt.Errorf("threepc/postgres: commit %s with marker: %w", b.xid, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	what := "commit " + b.xid.String() + " with marker"
	if b.closed.Load() || b.state.Load() != stateActive {
		return fmt.Errorf("threepc/postgres: %s: %w", what, errBranchNotActive)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("threepc/postgres: %s: %w", what, err)
	}
	var (
		before, after byte
		tags          []pgconn.CommandTag
		failure       error
		closed        bool
	)
	err := b.raw(func(c *pgx.Conn) error {
		pc := c.PgConn()
		before = pc.TxStatus()
		if before != 'T' {
			return nil // failed or ended: refused below, nothing sent
		}
		tags, failure = pipeline(ctx, pc,
			stmt{insertMarkerAndEvidenceSQL, []string{m.GTID, string(m.State), m.Primary, resource.JoinParticipants(m.Participants), m.Owner, m.Space, b.xid.Branch, b.xid.Space}},
			stmt{"COMMIT", nil})
		after, closed = pc.TxStatus(), pc.IsClosed()
		return nil
	})
	switch {
	case errors.Is(err, errConnGone):
		b.state.Store(stateFinished)
		return fmt.Errorf("threepc/postgres: %s: %w: the connection was lost before the commit was sent, the server rolled the transaction back: %w: %w", what, resource.ErrPrepareRefused, resource.ErrUnreachable, err)
	case err != nil:
		return mapError(opOther, what, err)
	}
	switch before {
	case 'E':
		rbErr := b.rollbackLocal(ctx)
		return errors.Join(
			fmt.Errorf("threepc/postgres: %s: %w: the transaction had failed (a statement returned an error); it was rolled back", what, resource.ErrPrepareRefused),
			rbErr)
	case 'I':
		b.state.Store(stateFinished)
		return fmt.Errorf("threepc/postgres: %s: %w: the transaction was already ended by a statement on the branch", what, resource.ErrPrepareRefused)
	}
	var commitTag pgconn.CommandTag
	if len(tags) == 2 {
		commitTag = tags[1]
	}
	switch {
	case failure == nil && commitTag.String() == "COMMIT":
		b.state.Store(stateFinished)
		return nil
	case failure == nil:
		b.state.Store(stateFinished)
		return fmt.Errorf("threepc/postgres: %s: %w: COMMIT answered %q: the transaction was rolled back", what, resource.ErrPrepareRefused, commitTag.String())
	case closed || !refusal(failure):
		// Sent, and the session broke (or the context ended) before the
		// answer: the commit may have happened.
		b.state.Store(stateOnePhaseLost)
		return mapError(opMarker, what+" (outcome unknown)", failure)
	}
	// The server refused the INSERT (and skipped the COMMIT) or the
	// COMMIT itself: nothing was committed.
	if after != 'I' {
		// Should ROLLBACK fail, Close discards the session, which rolls
		// the transaction back on the server.
		_ = b.rollbackLocal(ctx)
	}
	b.state.Store(stateFinished)
	mapped := mapError(opMarker, what+" (rolled back)", failure)
	if errors.Is(mapped, resource.ErrMarkerExists) {
		return mapped
	}
	return fmt.Errorf("%w: %w", resource.ErrPrepareRefused, mapped)
}

// insertMarkersSQL inserts a batch of marker rows given as arrays, one
// statement text whatever the batch's size. A conflicting row is "updated"
// to itself, so that RETURNING reports the state that is there.
const insertMarkersSQL = "INSERT INTO " + resource.MarkerTable + " (gtid, state, primary_name, participants, owner, space) " +
	"SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) " +
	"ON CONFLICT (gtid, branch) DO UPDATE SET state = " + resource.MarkerTable + ".state RETURNING gtid, state"

// InsertMarkers inserts a batch of marker rows in one statement
// (resource.MarkerBatcher) and returns the state of each gtid's row
// afterwards.
func (r *Resource) InsertMarkers(ctx context.Context, ms []resource.Marker) ([]resource.MarkerState, error) {
	cols := make([][]string, 6)
	for i := range cols {
		cols[i] = make([]string, len(ms))
	}
	at, err := resource.IndexBatch(ms)
	if err != nil {
		return nil, fmt.Errorf("threepc/postgres: insert markers: %w", err)
	}
	for i, m := range ms {
		cols[0][i], cols[1][i], cols[2][i] = m.GTID, string(m.State), m.Primary
		cols[3][i], cols[4][i], cols[5][i] = resource.JoinParticipants(m.Participants), m.Owner, m.Space
	}
	what := fmt.Sprintf("insert %d markers", len(ms))
	rows, err := r.db.QueryContext(ctx, insertMarkersSQL, cols[0], cols[1], cols[2], cols[3], cols[4], cols[5])
	if err != nil {
		return nil, r.markerError(what, err)
	}
	states, err := resource.ScanBatchStates(rows, at)
	if err != nil {
		return nil, r.markerError(what, err)
	}
	for i, s := range states {
		if s == "" {
			// Every row is inserted or returned: a missing one means the
			// answer is not what the statement promises.
			return nil, fmt.Errorf("threepc/postgres: %s: no state returned for %s: %w", what, ms[i].GTID, resource.ErrUnreachable)
		}
	}
	return states, nil
}
