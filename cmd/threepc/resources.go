package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/threepc/threepc/drivers"
	"github.com/threepc/threepc/migrations"
	"github.com/threepc/threepc/resource"
)

// checkTimeout bounds the start-up check of one database.
const checkTimeout = 15 * time.Second

// openOpts say what a command needs of its databases.
type openOpts struct {
	min          int  // fewest databases the command accepts
	migrationsOK bool // a missing marker table is fine (migrate)
}

// openResources parses every --db spec, opens every resource and runs
// every resource's Check before the command changes anything. Any
// problem is a usage error (exit 2) and closes what was opened.
func openResources(ctx context.Context, specs []string, o openOpts) ([]resource.Resource, error) {
	if len(specs) < max(o.min, 1) {
		return nil, usageErrorf("need at least %d --db NAME=URL flags, got %d (e.g. --db pg=postgres://postgres@127.0.0.1:5432/app?sslmode=disable --db maria=mysql://root@127.0.0.1:3306/app)", max(o.min, 1), len(specs))
	}
	type parsed struct{ name, url string }
	var ps []parsed
	seen := map[string]bool{}
	for _, s := range specs {
		name, url, err := drivers.ParseSpec(s)
		if err != nil {
			return nil, usageErrorf("--db: %v", err)
		}
		if seen[name] {
			return nil, usageErrorf("--db: name %q given twice; every database needs its own name", name)
		}
		seen[name] = true
		ps = append(ps, parsed{name, url})
	}
	var rs []resource.Resource
	closeAll := func() {
		for _, r := range rs {
			_ = resource.Close(r)
		}
	}
	for _, p := range ps {
		r, err := drivers.Open(p.name, p.url)
		if err != nil {
			closeAll()
			if errors.Is(err, drivers.ErrUnknownScheme) {
				return nil, usageErrorf("--db %s: %v", p.name, err)
			}
			return nil, usageErrorf("--db %s: %v", p.name, err)
		}
		rs = append(rs, r)
	}
	errs := make([]error, len(rs))
	var wg sync.WaitGroup
	for i, r := range rs {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, checkTimeout)
			defer cancel()
			err := r.Check(cctx)
			if err != nil && o.migrationsOK && errors.Is(err, resource.ErrMarkerTableMissing) {
				err = nil
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			closeAll()
			return nil, usageErrorf("database %q: %v%s", rs[i].Name(), err, hint(err))
		}
	}
	return rs, nil
}

// hint says what to do about a Check error, when the driver's message
// does not already: one hint per message. A refused connection needs
// none: the server's message says what it refused.
func hint(err error) string {
	switch {
	case errors.Is(err, resource.ErrUnreachable):
		return " (is the server running, and are the host and port in the URL right?)"
	case errors.Is(err, resource.ErrMarkerTableMissing) && !strings.Contains(err.Error(), "threepc migrate"):
		return " (run: threepc migrate --db ... with the same --db flags)"
	}
	return ""
}

func closeResources(rs []resource.Resource) {
	for _, r := range rs {
		_ = resource.Close(r)
	}
}

// sizePools lets every worker hold a pinned connection per database plus
// one more for marker rows, and keeps them idle between transactions
// (database/sql keeps only 2 idle connections by default, which turns a
// concurrent workload into a connection-setup benchmark). The cap stays
// under PostgreSQL's default max_connections of 100.
func sizePools(rs []resource.Resource, workers int) {
	n := min(2*workers+4, 90)
	for _, r := range rs {
		resource.DBOf(r).SetMaxOpenConns(n)
		resource.DBOf(r).SetMaxIdleConns(n)
	}
}

// dialect maps a resource to its migrations dialect. System is known
// once Check has talked to the server.
func dialect(r resource.Resource) (migrations.Dialect, error) {
	switch r.System() {
	case "postgresql":
		return migrations.DialectPostgres, nil
	case "mysql", "mariadb":
		return migrations.DialectMySQL, nil
	}
	return "", fmt.Errorf("database %q: unsupported system %q", r.Name(), r.System())
}

func names(rs []resource.Resource) string {
	var ns []string
	for _, r := range rs {
		ns = append(ns, r.Name())
	}
	return strings.Join(ns, ", ")
}
