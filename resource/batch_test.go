package resource

import (
	"strings"
	"testing"
)

func TestIndexBatch(t *testing.T) {
	m := func(gtid string) Marker {
		return Marker{GTID: gtid, State: StatePreCommit, Primary: "pg", Participants: []string{"my", "pg"}}
	}
	at, err := IndexBatch([]Marker{m("01J0000000000000000000000A"), m("01J0000000000000000000000B")})
	if err != nil || at["01J0000000000000000000000A"] != 0 || at["01J0000000000000000000000B"] != 1 || len(at) != 2 {
		t.Fatalf("IndexBatch = %v, %v", at, err)
	}
	if _, err := IndexBatch([]Marker{m("01J0000000000000000000000A"), m("01J0000000000000000000000A")}); err == nil || !strings.Contains(err.Error(), "twice in one batch") {
		t.Errorf("a gtid twice: %v", err)
	}
	bad := m("01J0000000000000000000000A")
	bad.Primary = ""
	if _, err := IndexBatch([]Marker{bad}); err == nil {
		t.Error("an invalid row passed")
	}
}
