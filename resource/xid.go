package resource

import (
	"fmt"
	"strings"
	"time"
)

// Prefix starts every branch id threepc writes to a database. Recovery
// lists only prepared branches that carry it. The trailing digit is the id
// format's version.
const Prefix = "3pc1"

// MySQLFormatID is the XA formatID of every threepc branch ("3PC1").
const MySQLFormatID = 0x33504331

// MaxNameLen is the longest resource name. It is fixed by MySQL, whose XA
// gtrid holds at most 64 bytes: Prefix, ':', the 26-byte gtid, ':' and the
// primary's name.
const MaxNameLen = 64 - len(Prefix) - 1 - GTIDLen - 1

// GTIDLen is the length of a global transaction id: a ULID in its
// canonical 26-character Crockford base32 form, which starts with its
// 48-bit millisecond timestamp, so gtids sort by creation time.
const GTIDLen = 26

const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// ValidateName reports whether name can be a resource name: 1 to
// MaxNameLen bytes of lowercase ASCII letters, digits, '_' and '-',
// starting with a letter. Names are written into branch ids as SQL
// literals, so nothing else is allowed.
func ValidateName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty resource name", ErrInvalidName)
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("%w: resource name %q is %d bytes, longer than %d (MySQL's XA gtrid limit of 64 bytes leaves that much)", ErrInvalidName, name, len(name), MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z':
		case i > 0 && (c >= '0' && c <= '9' || c == '_' || c == '-'):
		default:
			return fmt.Errorf("%w: resource name %q: want lowercase letters, digits, '_' or '-', starting with a letter", ErrInvalidName, name)
		}
	}
	return nil
}

// ValidateGTID reports whether gtid is a well-formed global transaction id.
func ValidateGTID(gtid string) error {
	if len(gtid) != GTIDLen {
		return fmt.Errorf("%w: gtid %q: want %d characters", ErrInvalidID, gtid, GTIDLen)
	}
	if gtid[0] > '7' {
		return fmt.Errorf("%w: gtid %q: timestamp overflows", ErrInvalidID, gtid)
	}
	for i := 0; i < len(gtid); i++ {
		if strings.IndexByte(crockford, gtid[i]) < 0 {
			return fmt.Errorf("%w: gtid %q: not Crockford base32", ErrInvalidID, gtid)
		}
	}
	return nil
}

// GTIDTime returns the creation time encoded in a gtid (millisecond
// precision, the creating instance's wall clock), or the zero time if the
// gtid is malformed.
func GTIDTime(gtid string) time.Time {
	if ValidateGTID(gtid) != nil {
		return time.Time{}
	}
	var ms int64
	for i := 0; i < 10; i++ {
		ms = ms<<5 | int64(strings.IndexByte(crockford, gtid[i]))
	}
	return time.UnixMilli(ms)
}

// XID identifies one branch of one global transaction. Its encodings
// carry the product prefix, the gtid (and so its creation time), the
// primary's name and the branch's own resource name, so that recovery can
// act on a prepared branch found with nothing else to go on.
type XID struct {
	GTID    string // global transaction id
	Primary string // name of the primary resource, whose marker row decides
	Branch  string // name of the resource this branch runs on
}

// Validate checks every part of the id. Coordinators call it before any
// database is touched.
func (x XID) Validate() error {
	if err := ValidateGTID(x.GTID); err != nil {
		return err
	}
	if err := ValidateName(x.Primary); err != nil {
		return fmt.Errorf("primary: %w", err)
	}
	if err := ValidateName(x.Branch); err != nil {
		return fmt.Errorf("branch: %w", err)
	}
	return nil
}

// Time is the creation time encoded in the gtid.
func (x XID) Time() time.Time { return GTIDTime(x.GTID) }

// String is the PostgreSQL form, which is also readable in logs.
func (x XID) String() string { return x.PostgresGID() }

// PostgresGID is the id used with PREPARE TRANSACTION: at most 4+1+26+1+
// 32+1+32 = 97 bytes, under PostgreSQL's 200. The branch's name is part of
// it because gids are unique per server, not per database.
func (x XID) PostgresGID() string {
	return Prefix + ":" + x.GTID + ":" + x.Primary + ":" + x.Branch
}

// MySQL returns the XA id parts: gtrid (at most 64 bytes) holds the
// prefix, gtid and primary; bqual holds the branch's name.
func (x XID) MySQL() (gtrid, bqual string, formatID int) {
	return Prefix + ":" + x.GTID + ":" + x.Primary, x.Branch, MySQLFormatID
}

// ParsePostgresGID parses a gid written by PostgresGID. ok is false for
// gids that threepc did not write.
func ParsePostgresGID(gid string) (x XID, ok bool) {
	parts := strings.Split(gid, ":")
	if len(parts) != 4 || parts[0] != Prefix {
		return XID{}, false
	}
	x = XID{GTID: parts[1], Primary: parts[2], Branch: parts[3]}
	return x, x.Validate() == nil
}

// ParseMySQL parses XA id parts written by MySQL. ok is false for
// transactions that threepc did not write.
func ParseMySQL(formatID int, gtrid, bqual string) (x XID, ok bool) {
	if formatID != MySQLFormatID {
		return XID{}, false
	}
	parts := strings.Split(gtrid, ":")
	if len(parts) != 3 || parts[0] != Prefix {
		return XID{}, false
	}
	x = XID{GTID: parts[1], Primary: parts[2], Branch: bqual}
	return x, x.Validate() == nil
}
