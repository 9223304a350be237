package resource

import (
	"database/sql"
	"fmt"
)

// IndexBatch validates the rows of a batched marker insert
// (MarkerBatcher) and maps each gtid to its place in ms. A gtid twice in
// one batch is an error: one statement cannot answer for both.
func IndexBatch(ms []Marker) (map[string]int, error) {
	at := make(map[string]int, len(ms))
	for i, m := range ms {
		if err := m.Validate(); err != nil {
			return nil, err
		}
		if _, dup := at[m.GTID]; dup {
			return nil, fmt.Errorf("gtid %s twice in one batch", m.GTID)
		}
		at[m.GTID] = i
	}
	return at, nil
}

// ScanBatchStates reads the (gtid, state) rows that a batched insert
// returns into the state of each row of the batch, by the places of
// IndexBatch. A row the statement did not return keeps the state "":
// the driver decides what that means. It closes rows.
func ScanBatchStates(rows *sql.Rows, at map[string]int) ([]MarkerState, error) {
	defer rows.Close()
	states := make([]MarkerState, len(at))
	for rows.Next() {
		var gtid, state string
		if err := rows.Scan(&gtid, &state); err != nil {
			return nil, err
		}
		if i, ok := at[gtid]; ok {
			states[i] = MarkerState(state)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return states, nil
}
