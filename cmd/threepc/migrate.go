package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/threepc/threepc/migrations"
	"github.com/threepc/threepc/resource"
)

func newMigrateCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "migrate",
		Short: "Create threepc's marker table in every database, or upgrade it (idempotent: says \"already at version N\" when there is nothing to do)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			rs, err := openResources(ctx, g.dbs, openOpts{min: 1, migrationsOK: true})
			if err != nil {
				return err
			}
			defer closeResources(rs)
			return migrateAll(ctx, rs, func(format string, args ...any) { fmt.Printf(format, args...) })
		},
	}
}

// migrateAll applies the migrations to every resource and re-checks it.
func migrateAll(ctx context.Context, rs []resource.Resource, printf func(string, ...any)) error {
	for _, r := range rs {
		d, err := dialect(r)
		if err != nil {
			return usageErrorf("%v", err)
		}
		t0 := time.Now()
		before, _, err := migrations.Version(ctx, resource.DBOf(r), d)
		if err != nil {
			return failedErrorf("database %q: %v", r.Name(), err)
		}
		if err := migrations.Up(ctx, resource.DBOf(r), d); err != nil {
			return failedErrorf("database %q: %v", r.Name(), err)
		}
		v, _, err := migrations.Version(ctx, resource.DBOf(r), d)
		if err != nil {
			return failedErrorf("database %q: %v", r.Name(), err)
		}
		if err := r.Check(ctx); err != nil {
			return failedErrorf("database %q after migrating: %v", r.Name(), err)
		}
		took := time.Since(t0).Round(time.Millisecond)
		switch {
		case v == before:
			printf("%-12s %-10s already at version %d, nothing to do\n", r.Name(), r.System(), v)
		case before == 0:
			printf("%-12s %-10s migrated to version %d in %v\n", r.Name(), r.System(), v, took)
		default:
			printf("%-12s %-10s migrated from version %d to version %d in %v\n", r.Name(), r.System(), before, v, took)
		}
	}
	return nil
}
