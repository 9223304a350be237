package mysql

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/threepc/threepc/resource"
)

// serverVersion is a parsed SELECT VERSION().
type serverVersion struct {
	system              string // "mysql" or "mariadb"
	major, minor, patch int
	raw                 string
}

// parseVersion parses the output of SELECT VERSION(), such as
// "8.0.36", "8.4.2-commercial", "10.11.6-MariaDB-0+deb12u1" or (from
// servers that keep the old replication prefix) "5.5.5-10.11.6-MariaDB".
func parseVersion(s string) (serverVersion, error) {
	v := serverVersion{system: "mysql", raw: s}
	if strings.Contains(strings.ToLower(s), "mariadb") {
		v.system = "mariadb"
		s = strings.TrimPrefix(s, "5.5.5-")
	}
	num := s
	if i := strings.IndexAny(num, "-+ "); i >= 0 {
		num = num[:i]
	}
	parts := strings.Split(num, ".")
	if len(parts) < 2 || len(parts) > 3 {
		return serverVersion{}, fmt.Errorf("threepc/mysql: cannot parse server version %q", v.raw)
	}
	var nums [3]int
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return serverVersion{}, fmt.Errorf("threepc/mysql: cannot parse server version %q", v.raw)
		}
		nums[i] = n
	}
	v.major, v.minor, v.patch = nums[0], nums[1], nums[2]
	return v, nil
}

// atLeast reports whether v >= major.minor.patch.
func (v serverVersion) atLeast(major, minor, patch int) bool {
	if v.major != major {
		return v.major > major
	}
	if v.minor != minor {
		return v.minor > minor
	}
	return v.patch >= patch
}

// supported returns an error wrapping resource.ErrUnsupported for servers
// threepc cannot use: MariaDB before 10.5 loses a prepared XA when its
// session ends, and MySQL before 8.0 is out of support.
func (v serverVersion) supported() error {
	switch {
	case v.system == "mariadb" && !v.atLeast(10, 5, 0):
		return fmt.Errorf("threepc/mysql: %w: MariaDB %s: need 10.5 or later (earlier versions roll back a prepared XA transaction when its connection closes)", resource.ErrUnsupported, v.raw)
	case v.system == "mysql" && !v.atLeast(8, 0, 0):
		return fmt.Errorf("threepc/mysql: %w: MySQL %s: need 8.0 or later", resource.ErrUnsupported, v.raw)
	}
	return nil
}

// detachCapable reports whether the server has xa_detach_on_prepare
// (MySQL 8.0.29+); whether it is on is a session setting read at Begin.
func (v serverVersion) detachCapable() bool {
	return v.system == "mysql" && v.atLeast(8, 0, 29)
}

// attachesPrepared reports whether a prepared XA may stay attached to its
// session on this server: always on MariaDB; on MySQL before 8.0.29 (and
// with xa_detach_on_prepare=OFF, a session setting read at Begin).
func (v serverVersion) attachesPrepared() bool {
	return v.system == "mariadb" || !v.detachCapable()
}

// statusTable is the table that holds the session's status counters:
// MySQL 8 removed information_schema.SESSION_STATUS.
func (v serverVersion) statusTable() string {
	if v.system == "mariadb" {
		return "information_schema.SESSION_STATUS"
	}
	return "performance_schema.session_status"
}
