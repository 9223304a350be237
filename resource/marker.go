package resource

import (
	"fmt"
	"strings"
	"time"
)

// MarkerTable is the name of the marker table the migrations create in
// every participant database.
const MarkerTable = "threepc_markers"

// MarkerState is the state recorded in a marker row.
type MarkerState string

const (
	// StatePreCommit: the transaction is decided to commit. At the primary
	// the insert of this row is the commit point; elsewhere it is written
	// only after that decision.
	StatePreCommit MarkerState = "precommit"
	// StateAbort: recovery (or the coordinator itself, after a lost
	// logging-last-resource commit) fenced the transaction at the primary;
	// it can never commit. Kept as a tombstone for the retention period.
	StateAbort MarkerState = "abort"
	// StateCommitted: only at the primary, written over its precommit row
	// (Resource.Tombstone) once every branch is proven committed. It is a
	// tombstone: it outlives every coordinator and scan that could still
	// try to fence the gtid, and is collected after the retention period.
	StateCommitted MarkerState = "committed"
)

// Valid reports whether s is a state InsertMarker accepts.
func (s MarkerState) Valid() bool { return s == StatePreCommit || s == StateAbort }

// Known reports whether s is any state a marker row can hold.
func (s MarkerState) Known() bool { return s.Valid() || s == StateCommitted }

// Marker is one row of the marker table.
type Marker struct {
	GTID         string
	State        MarkerState
	Primary      string   // name of the primary resource
	Participants []string // every resource of the transaction, sorted
	Owner        string   // id of the instance that wrote the row
	// Space is the namespace tag (SpaceTag) of the deployment that wrote
	// the row: deployments that share a database share its marker table.
	// Rows written before namespaces existed read as "".
	Space string
	// CreatedAt is the database's clock when the row was inserted. It is
	// set by the database on insert and ignored by InsertMarker.
	CreatedAt time.Time
	// Age is the row's age by the database's own clock when it was read
	// (ListMarkers, ReadMarker), so that retention does not depend on the
	// reader's clock. Ignored by InsertMarker.
	Age time.Duration
}

// EvidenceState is the state column of evidence rows in the marker table:
// a row (gtid, branch name) that a branch inserts inside its own
// transaction, so that it is visible from other sessions exactly when the
// branch committed. Marker rows have an empty branch column.
const EvidenceState = "evidence"

// MaxOwnerLen is the longest instance id a marker row stores.
const MaxOwnerLen = 128

// Validate checks the marker before it is written.
func (m Marker) Validate() error {
	if err := ValidateGTID(m.GTID); err != nil {
		return err
	}
	if !m.State.Valid() {
		return fmt.Errorf("%w: marker state %q", ErrInvalidID, m.State)
	}
	if err := ValidateName(m.Primary); err != nil {
		return fmt.Errorf("marker primary: %w", err)
	}
	if len(m.Participants) == 0 {
		return fmt.Errorf("%w: marker without participants", ErrInvalidID)
	}
	for _, p := range m.Participants {
		if err := ValidateName(p); err != nil {
			return fmt.Errorf("marker participant: %w", err)
		}
	}
	if m.Space != "" && !validTag(m.Space) {
		return fmt.Errorf("%w: marker namespace tag %q", ErrInvalidID, m.Space)
	}
	if len(m.Owner) > MaxOwnerLen {
		return fmt.Errorf("%w: owner id longer than %d bytes", ErrInvalidID, MaxOwnerLen)
	}
	return nil
}

// JoinParticipants encodes a participant list for the marker table's
// participants column. Names cannot contain commas (ValidateName).
func JoinParticipants(names []string) string { return strings.Join(names, ",") }

// SplitParticipants decodes the marker table's participants column.
func SplitParticipants(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}
