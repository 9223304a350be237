// Package drivers opens a threepc resource from a URL, choosing the
// driver by the URL's scheme. It is for programs that take database
// addresses as configuration, such as the threepc command; code that
// builds its own *sql.DB uses drivers/postgres or drivers/mysql directly.
package drivers

import (
	"errors"
	"fmt"
	"strings"

	"github.com/threepc/threepc/drivers/mysql"
	"github.com/threepc/threepc/drivers/postgres"
	"github.com/threepc/threepc/resource"
)

// ErrUnknownScheme: the URL's scheme selects no driver.
var ErrUnknownScheme = errors.New("threepc/drivers: unknown URL scheme (want postgres://, postgresql://, mysql:// or mariadb://)")

// Open returns a resource named name for url:
//
//	postgres://user:pass@host:port/db?sslmode=disable   (also postgresql://)
//	mysql://user:pass@host:port/db                      (MySQL 8 and MariaDB)
//
// The resource owns its connection pool. Nothing is contacted until it is
// used; call Check to verify the setup.
func Open(name, url string) (resource.Resource, error) {
	if err := resource.ValidateName(name); err != nil {
		return nil, err
	}
	scheme, _, ok := strings.Cut(url, "://")
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownScheme, redact(url))
	}
	switch strings.ToLower(scheme) {
	case "postgres", "postgresql":
		return postgres.Open(name, url, postgres.Config{})
	case "mysql", "mariadb":
		return mysql.Open(name, url, mysql.Config{})
	}
	return nil, fmt.Errorf("%w: %q", ErrUnknownScheme, scheme)
}

// ParseSpec splits a "NAME=URL" resource specification, as taken by the
// threepc command's --db flag.
func ParseSpec(spec string) (name, url string, err error) {
	name, url, ok := strings.Cut(spec, "=")
	if !ok || name == "" || url == "" {
		return "", "", fmt.Errorf("threepc/drivers: resource %q: want NAME=URL, e.g. orders=postgres://user@127.0.0.1:5432/orders", redact(spec))
	}
	if err := resource.ValidateName(name); err != nil {
		return "", "", err
	}
	return name, url, nil
}

// redact hides a password in a URL for error messages.
func redact(s string) string {
	at := strings.LastIndex(s, "@")
	scheme := strings.Index(s, "://")
	if at < 0 || scheme < 0 || at < scheme {
		return s
	}
	userinfo := s[scheme+3 : at]
	if user, _, ok := strings.Cut(userinfo, ":"); ok {
		return s[:scheme+3] + user + ":xxxxx" + s[at:]
	}
	return s
}
