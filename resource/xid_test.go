package resource

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestValidateName(t *testing.T) {
	good := []string{"a", "orders", "db-1", "x_y", strings.Repeat("a", MaxNameLen)}
	for _, n := range good {
		if err := ValidateName(n); err != nil {
			t.Errorf("ValidateName(%q): %v", n, err)
		}
	}
	bad := []string{"", "1db", "_x", "Orders", "a b", "a:b", "a,b", "a'b", "ü", strings.Repeat("a", MaxNameLen+1)}
	for _, n := range bad {
		if err := ValidateName(n); !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidateName(%q) = %v, want ErrInvalidName", n, err)
		}
	}
	if MaxNameLen != 32 {
		t.Fatalf("MaxNameLen = %d; the MySQL gtrid arithmetic says 32", MaxNameLen)
	}
}

const gtid = "01J9ZQ4M3B6Q5W2E8R7T1Y0V9P"

func TestXIDEncodingsRoundTrip(t *testing.T) {
	x := XID{GTID: "01J9ZQ4M3B6Q5W2E8R7T1Y0H9P", Primary: strings.Repeat("p", MaxNameLen), Branch: strings.Repeat("b", MaxNameLen),
		Space: SpaceTag("some deployment"), Session: 1<<64 - 1}
	if err := x.Validate(); err != nil {
		t.Fatal(err)
	}
	gid := x.PostgresGID()
	if len(gid) >= 200 {
		t.Fatalf("PostgreSQL gid is %d bytes, limit 200", len(gid))
	}
	if got, ok := ParsePostgresGID(gid); !ok || !got.SameBranch(x) || got.Session != 0 {
		t.Fatalf("ParsePostgresGID(%q) = %v, %v", gid, got, ok)
	}
	db := DatabaseTag(strings.Repeat("d", 64))
	gtrid, bqual, fid := x.MySQL(db)
	if len(gtrid) > 64 || len(bqual) > 64 {
		t.Fatalf("MySQL gtrid %d bytes, bqual %d bytes, limit 64 each", len(gtrid), len(bqual))
	}
	if got, tag, ok := ParseMySQL(fid, gtrid, bqual); !ok || got != x || tag != db {
		t.Fatalf("ParseMySQL = %v, %q, %v", got, tag, ok)
	}
	if _, _, ok := ParseMySQL(fid, gtrid, strings.Replace(bqual, ":"+db+":", ":"+db+":0", 1)); ok {
		t.Fatal("ParseMySQL accepted a session with a leading zero")
	}
	if SpaceTag("a") == SpaceTag("b") || SpaceTag("") == DatabaseTag("") || len(SpaceTag("")) != TagLen {
		t.Fatal("tags do not separate namespaces")
	}
}

func TestForeignIDsAreNotOurs(t *testing.T) {
	sp := SpaceTag("")
	for _, gid := range []string{"", "foreign-1", "3pc1:x:a:b", "3pc1:" + gtid + ":a:b", "3pc3:" + gtid + ":a:b:" + sp, Prefix + ":" + gtid + ":a", Prefix + ":" + gtid + ":A:b:" + sp, Prefix + ":" + gtid + ":a:b:short"} {
		if _, ok := ParsePostgresGID(gid); ok {
			t.Errorf("ParsePostgresGID(%q) accepted a foreign gid", gid)
		}
	}
	gtrid := Prefix + ":" + gtid + ":a"
	bqual := "b:" + sp + ":" + DatabaseTag("x") + ":1"
	if _, _, ok := ParseMySQL(MySQLFormatID, gtrid, bqual); !ok {
		t.Fatal("ParseMySQL refused a good id")
	}
	if _, _, ok := ParseMySQL(1, gtrid, bqual); ok {
		t.Error("ParseMySQL accepted another formatID")
	}
	if _, _, ok := ParseMySQL(MySQLFormatID, Prefix+":bad:a", bqual); ok {
		t.Error("ParseMySQL accepted a malformed gtrid")
	}
	if _, _, ok := ParseMySQL(MySQLFormatID, "3pc1:"+gtid+":a", "b"); ok {
		t.Error("ParseMySQL accepted a version-1 id")
	}
	for _, bad := range []string{"B'", "b", "b:" + sp + ":" + DatabaseTag("x"), "b:" + sp + ":short:1", "b:" + sp + ":" + DatabaseTag("x") + ":", "b:" + sp + ":" + DatabaseTag("x") + ":1:2"} {
		if _, _, ok := ParseMySQL(MySQLFormatID, gtrid, bad); ok {
			t.Errorf("ParseMySQL accepted the malformed bqual %q", bad)
		}
	}
}

func TestGTID(t *testing.T) {
	for _, bad := range []string{"", "short", gtid + "0", "01J9ZQ4M3B6Q5W2E8R7T1Y0UIL", "81J9ZQ4M3B6Q5W2E8R7T1Y0U9P", "01j9zq4m3b6q5w2e8r7t1y0u9p"} {
		if err := ValidateGTID(bad); !errors.Is(err, ErrInvalidID) {
			t.Errorf("ValidateGTID(%q) = %v, want ErrInvalidID", bad, err)
		}
	}
	// 01J9ZQ4M3B is the ULID timestamp 0x1927F72506B ms: 2024-10-12T06:37:31.115Z.
	want := time.UnixMilli(0x1927F72506B)
	if got := GTIDTime(gtid); !got.Equal(want) {
		t.Fatalf("GTIDTime = %v, want %v", got, want)
	}
	if !GTIDTime("bad").IsZero() {
		t.Fatal("GTIDTime of a malformed gtid must be zero")
	}
}

func TestMarkerValidate(t *testing.T) {
	m := Marker{GTID: gtid, State: StatePreCommit, Primary: "a", Participants: []string{"a", "b"}, Owner: "host/1"}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, mutate := range []func(*Marker){
		func(m *Marker) { m.State = "maybe" },
		func(m *Marker) { m.GTID = "x" },
		func(m *Marker) { m.Primary = "A" },
		func(m *Marker) { m.Participants = nil },
		func(m *Marker) { m.Participants = []string{"a,b"} },
		func(m *Marker) { m.Owner = strings.Repeat("o", MaxOwnerLen+1) },
	} {
		bad := m
		mutate(&bad)
		if err := bad.Validate(); err == nil {
			t.Errorf("Validate(%+v): want an error", bad)
		}
	}
	if got := SplitParticipants(JoinParticipants([]string{"a", "b"})); len(got) != 2 || got[1] != "b" {
		t.Fatalf("participants round trip: %v", got)
	}
}

func FuzzParsePostgresGID(f *testing.F) {
	f.Add("3pc1:" + gtid + ":a:b")
	f.Add("x")
	f.Fuzz(func(t *testing.T, gid string) {
		x, ok := ParsePostgresGID(gid)
		if ok && x.PostgresGID() != gid {
			t.Fatalf("accepted %q but re-encodes as %q", gid, x.PostgresGID())
		}
	})
}
