package resource

// Optional interfaces that telemetry reads: of a Resource, its server
// and database for the span attributes; of an error, its status code.

// ServerAddresser is an optional interface of a Resource: the
// address of its server, as "host", "host:port" or "[ipv6]:port", for the
// server.address and server.port attributes. Drivers should implement it.
type ServerAddresser interface {
	ServerAddress() string
}

// DatabaseNamer is an optional interface of a Resource: the
// database (PostgreSQL) or schema (MySQL) name, for db.namespace. Without
// it db.namespace is the resource's registered name.
type DatabaseNamer interface {
	DatabaseName() string
}

// SQLStater is an optional interface of an error in a chain: its SQLSTATE,
// for db.response.status_code. *pgconn.PgError implements it, so the
// PostgreSQL driver needs nothing more.
type SQLStater interface {
	SQLState() string
}

// StatusCoder is an optional interface of an error in a chain: the
// database's own status code, as a string, for db.response.status_code.
// Telemetry checks it before SQLStater. The MySQL driver should wrap
// *mysql.MySQLError in a type implementing it (returning the error
// number, e.g. "1397"), because the driver's error type exposes the
// number as a field only.
type StatusCoder interface {
	DBStatusCode() string
}
