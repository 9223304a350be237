package resource

import (
	"crypto/sha256"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Prefix starts every branch id threepc writes to a database. Recovery
// lists only prepared branches that carry it. The trailing digit is the id
// format's version: "3pc2" ids carry a namespace (and, on MySQL, the
// branch's database and session); the earlier "3pc1" ids are not
// recognised any more (drain them with the old version before upgrading,
// see docs/DESIGN.md).
const Prefix = "3pc2"

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

// TagLen is the length of a namespace or database tag in branch ids.
const TagLen = 8

// MaxNamespaceLen is the longest deployment namespace.
const MaxNamespaceLen = 128

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
		return fmt.Errorf("%w %q: %d bytes, longer than %d (MySQL's XA gtrid limit of 64 bytes leaves that much)", ErrInvalidName, name, len(name), MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z':
		case i > 0 && (c >= '0' && c <= '9' || c == '_' || c == '-'):
		default:
			return fmt.Errorf("%w %q: want lowercase letters, digits, '_' or '-', starting with a letter", ErrInvalidName, name)
		}
	}
	return nil
}

// ValidateNamespace reports whether ns can be a deployment namespace: at
// most MaxNamespaceLen bytes of printable ASCII. The empty namespace is
// the default one.
func ValidateNamespace(ns string) error {
	if len(ns) > MaxNamespaceLen {
		return fmt.Errorf("%w: namespace is %d bytes, longer than %d", ErrInvalidName, len(ns), MaxNamespaceLen)
	}
	for i := 0; i < len(ns); i++ {
		if ns[i] < 0x21 || ns[i] > 0x7e {
			return fmt.Errorf("%w: namespace %q: want printable ASCII without spaces", ErrInvalidName, ns)
		}
	}
	return nil
}

// tag hashes s into TagLen Crockford base32 characters.
func tag(kind, s string) string {
	sum := sha256.Sum256([]byte("threepc " + kind + "\x00" + s))
	var b [TagLen]byte
	// 40 bits: 5 bytes, 8 characters of 5 bits.
	v := uint64(sum[0])<<32 | uint64(sum[1])<<24 | uint64(sum[2])<<16 | uint64(sum[3])<<8 | uint64(sum[4])
	for i := TagLen - 1; i >= 0; i-- {
		b[i] = crockford[v&31]
		v >>= 5
	}
	return string(b[:])
}

// SpaceTag is the tag of a deployment namespace, as branch ids carry it
// (XID.Space). Coordinators and scanners of one deployment must use the
// same namespace; a scanner finishes only branches of its own.
func SpaceTag(namespace string) string { return tag("namespace", namespace) }

// DatabaseTag is the tag of a database (schema) name. The MySQL driver
// writes it into branch ids, because XA RECOVER lists the whole server
// without saying which database a branch belongs to.
func DatabaseTag(database string) string { return tag("database", database) }

func validTag(s string) bool {
	if len(s) != TagLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if strings.IndexByte(crockford, s[i]) < 0 {
			return false
		}
	}
	return true
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
// primary's name, the branch's own resource name and the deployment's
// namespace tag, so that recovery can act on a prepared branch found with
// nothing else to go on, and only on its own.
type XID struct {
	GTID    string // global transaction id
	Primary string // name of the primary resource, whose marker row decides
	Branch  string // name of the resource this branch runs on
	// Space is the deployment's namespace tag (SpaceTag). The coordinator
	// sets it; recovery finishes only branches of its own namespace.
	Space string
	// Session is the server's id of the session that began the branch,
	// where the driver records it in the id (MySQL/MariaDB: recovery ends
	// that session to take over a branch still attached to it); 0
	// otherwise. It is not part of a branch's identity in evidence rows.
	Session uint64
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
	if !validTag(x.Space) {
		return fmt.Errorf("%w: namespace tag %q: want %d Crockford base32 characters (resource.SpaceTag)", ErrInvalidID, x.Space, TagLen)
	}
	return nil
}

// Time is the creation time encoded in the gtid.
func (x XID) Time() time.Time { return GTIDTime(x.GTID) }

// String is the PostgreSQL form, which is also readable in logs.
func (x XID) String() string { return x.PostgresGID() }

// SameBranch reports whether x and y name the same branch (Session aside).
func (x XID) SameBranch(y XID) bool {
	return x.GTID == y.GTID && x.Primary == y.Primary && x.Branch == y.Branch && x.Space == y.Space
}

// PostgresGID is the id used with PREPARE TRANSACTION: at most
// 4+1+26+1+32+1+32+1+8 = 106 bytes, under PostgreSQL's 200. The branch's
// name is part of it because gids are unique per server, not per
// database.
func (x XID) PostgresGID() string {
	return Prefix + ":" + x.GTID + ":" + x.Primary + ":" + x.Branch + ":" + x.Space
}

// MySQL returns the XA id parts for a branch in the database whose
// DatabaseTag is dbTag: gtrid (at most 64 bytes) holds the prefix, gtid
// and primary; bqual (at most 32+1+8+1+8+1+13 = 64 bytes) the branch's
// name, the namespace tag, the database tag and the session id in base32.
func (x XID) MySQL(dbTag string) (gtrid, bqual string, formatID int) {
	return Prefix + ":" + x.GTID + ":" + x.Primary,
		x.Branch + ":" + x.Space + ":" + dbTag + ":" + strconv.FormatUint(x.Session, 32),
		MySQLFormatID
}

// ParsePostgresGID parses a gid written by PostgresGID. ok is false for
// gids that threepc did not write (or wrote in an earlier format).
func ParsePostgresGID(gid string) (x XID, ok bool) {
	parts := strings.Split(gid, ":")
	if len(parts) != 5 || parts[0] != Prefix {
		return XID{}, false
	}
	x = XID{GTID: parts[1], Primary: parts[2], Branch: parts[3], Space: parts[4]}
	return x, x.Validate() == nil
}

// ParseMySQL parses XA id parts written by MySQL. ok is false for
// transactions that threepc did not write (or wrote in an earlier
// format); dbTag is the DatabaseTag of the branch's database.
func ParseMySQL(formatID int, gtrid, bqual string) (x XID, dbTag string, ok bool) {
	if formatID != MySQLFormatID {
		return XID{}, "", false
	}
	parts := strings.Split(gtrid, ":")
	if len(parts) != 3 || parts[0] != Prefix {
		return XID{}, "", false
	}
	bq := strings.Split(bqual, ":")
	if len(bq) != 4 || !validTag(bq[2]) || bq[3] == "" || strings.Trim(bq[3], "0123456789abcdefghijklmnopqrstuv") != "" {
		return XID{}, "", false
	}
	session, err := strconv.ParseUint(bq[3], 32, 64)
	if err != nil {
		return XID{}, "", false
	}
	x = XID{GTID: parts[1], Primary: parts[2], Branch: bq[0], Space: bq[1], Session: session}
	if x.Validate() != nil {
		return XID{}, "", false
	}
	// Only the canonical spelling is ours (no leading zeros in the
	// session, say): another spelling would be another XA id.
	if g, b, _ := x.MySQL(bq[2]); g != gtrid || b != bqual {
		return XID{}, "", false
	}
	return x, bq[2], true
}
