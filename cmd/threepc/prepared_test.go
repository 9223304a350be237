package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/threepc/threepc/resource"
)

// listerRes is a resource whose only working methods are System and,
// when list is set, ListServerPrepared.
type listerRes struct {
	resource.Resource
	system string
}

func (r listerRes) System() string { return r.system }

type listingRes struct {
	listerRes
	list []resource.ServerPrepared
}

func (r listingRes) ListServerPrepared(context.Context) ([]resource.ServerPrepared, error) {
	return r.list, nil
}

func TestPreparedStats(t *testing.T) {
	ctx := context.Background()
	space := resource.SpaceTag("ns")
	now := time.Now()
	ourXID := func(age time.Duration, sp string) resource.XID {
		return resource.XID{GTID: gtidAt(now.Add(-age)), Primary: "a", Branch: "a", Space: sp}
	}
	// PostgreSQL: the server's prepared times; other databases left out.
	pg := listingRes{listerRes{system: "postgresql"}, []resource.ServerPrepared{
		{ID: "1", Ours: true, XID: ourXID(0, space), Database: "d", SameDatabase: true, PreparedAt: now.Add(-time.Hour)},
		{ID: "2", Ours: true, XID: ourXID(0, resource.SpaceTag("other")), Database: "d", SameDatabase: true, PreparedAt: now.Add(-2 * time.Hour)},
		{ID: "3", Database: "d", SameDatabase: true, PreparedAt: now.Add(-3 * time.Hour)},
		{ID: "4", Ours: true, XID: ourXID(0, space), Database: "e", PreparedAt: now.Add(-9 * time.Hour)},
		{ID: "5", Database: "e", PreparedAt: now.Add(-9 * time.Hour)},
	}}
	ours, oldestOurs, others, oldestOther, err := preparedStats(ctx, pg, space)
	if err != nil || ours != 1 || others != 2 || oldestOurs.Round(time.Minute) != time.Hour || oldestOther.Round(time.Minute) != 3*time.Hour {
		t.Errorf("postgresql: %d %v %d %v %v; want 1 1h 2 3h", ours, oldestOurs, others, oldestOther, err)
	}
	// MySQL: server-wide, no times; ours aged by their ids.
	my := listingRes{listerRes{system: "mariadb"}, []resource.ServerPrepared{
		{ID: "1", Ours: true, XID: ourXID(time.Hour, space), SameDatabase: true},
		{ID: "2", Ours: true, XID: ourXID(2*time.Hour, space)}, // another database
		{ID: "3"},
	}}
	ours, oldestOurs, others, oldestOther, err = preparedStats(ctx, my, space)
	if err != nil || ours != 1 || others != 2 || oldestOurs.Round(time.Minute) != time.Hour || oldestOther != -1 {
		t.Errorf("mariadb: %d %v %d %v %v; want 1 1h 2 -1", ours, oldestOurs, others, oldestOther, err)
	}
	// A driver without the ability.
	_, _, _, _, err = preparedStats(ctx, listerRes{system: "mysql"}, space)
	if err == nil || !strings.Contains(err.Error(), "ServerPreparedLister") {
		t.Errorf("resource without ListServerPrepared: %v", err)
	}
}

// gtidAt is a valid gtid created at t.
func gtidAt(t time.Time) string {
	const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
	var b [resource.GTIDLen]byte
	ms := uint64(t.UnixMilli())
	for i := 9; i >= 0; i-- {
		b[i] = crockford[ms&31]
		ms >>= 5
	}
	for i := 10; i < len(b); i++ {
		b[i] = '0'
	}
	return string(b[:])
}
