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
	// StateAbort: recovery fenced the transaction at the primary; it can
	// never commit.
	StateAbort MarkerState = "abort"
)

// Valid reports whether s is a known state.
func (s MarkerState) Valid() bool { return s == StatePreCommit || s == StateAbort }

// Marker is one row of the marker table.
type Marker struct {
	GTID         string
	State        MarkerState
	Primary      string   // name of the primary resource
	Participants []string // every resource of the transaction, sorted
	Owner        string   // id of the instance that wrote the row
	// CreatedAt is the database's clock when the row was inserted. It is
	// set by the database on insert and ignored by InsertMarker.
	CreatedAt time.Time
}

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
