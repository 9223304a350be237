package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/threepc/threepc/resource"
)

const markerColumns = "gtid, state, primary_name, participants, owner, created_at"

// InsertMarker inserts m; created_at comes from the database's clock. The
// primary key on gtid makes the insert a compare-and-set: an existing row
// fails it with ErrMarkerExists. A connection error (ErrUnreachable) leaves
// the outcome unknown: read the marker back.
func (r *Resource) InsertMarker(ctx context.Context, m resource.Marker) error {
	if err := m.Validate(); err != nil {
		return fmt.Errorf("threepc/postgres: insert marker: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("threepc/postgres: insert marker %s: %w", m.GTID, err)
	}
	_, err := r.db.ExecContext(ctx,
		"INSERT INTO "+resource.MarkerTable+" (gtid, state, primary_name, participants, owner) VALUES ($1, $2, $3, $4, $5)",
		m.GTID, string(m.State), m.Primary, resource.JoinParticipants(m.Participants), m.Owner)
	return r.markerError("insert marker "+m.GTID, err)
}

// ReadMarker reads the marker row of gtid, or returns ErrNoMarker.
func (r *Resource) ReadMarker(ctx context.Context, gtid string) (resource.Marker, error) {
	if err := resource.ValidateGTID(gtid); err != nil {
		return resource.Marker{}, fmt.Errorf("threepc/postgres: read marker: %w", err)
	}
	row := r.db.QueryRowContext(ctx,
		"SELECT "+markerColumns+" FROM "+resource.MarkerTable+" WHERE gtid = $1", gtid)
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
	rows, err := r.db.QueryContext(ctx, "SELECT "+markerColumns+" FROM "+resource.MarkerTable+" ORDER BY gtid")
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

// DeleteMarkers deletes the marker rows of gtids in one statement.
func (r *Resource) DeleteMarkers(ctx context.Context, gtids ...string) error {
	if len(gtids) == 0 {
		return nil
	}
	_, err := r.db.ExecContext(ctx, "DELETE FROM "+resource.MarkerTable+" WHERE gtid = ANY($1)", gtids)
	return r.markerError("delete markers", err)
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
	)
	if err := s.Scan(&m.GTID, &state, &m.Primary, &parts, &m.Owner, &m.CreatedAt); err != nil {
		return resource.Marker{}, err
	}
	m.State = resource.MarkerState(state)
	m.Participants = resource.SplitParticipants(parts)
	return m, nil
}
