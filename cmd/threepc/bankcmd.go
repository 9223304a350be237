package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/threepc/threepc/cmd/threepc/internal/bank"
	"github.com/threepc/threepc/recovery"
	"github.com/threepc/threepc/resource"
)

func newBankCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bank",
		Short: "The transfer workload: set up accounts, run transfers, check that money is conserved",
	}
	cmd.AddCommand(newBankSetupCmd(g), newBankRunCmd(g), newBankCheckCmd(g))
	return cmd
}

func newBankSetupCmd(g *globals) *cobra.Command {
	var (
		accounts int
		reset    bool
	)
	cmd := &cobra.Command{
		Use:   "setup",
		Short: "Create threepc_bank_accounts in every database and seed --accounts rows of balance 1000",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if accounts <= 0 {
				return usageErrorf("--accounts must be positive, got %d", accounts)
			}
			rs, err := openResources(ctx, g.dbs, openOpts{min: 2})
			if err != nil {
				return err
			}
			defer closeResources(rs)
			return bankSetup(ctx, os.Stdout, rs, accounts, reset)
		},
	}
	cmd.Flags().IntVar(&accounts, "accounts", 1000, "accounts per database")
	cmd.Flags().BoolVar(&reset, "reset", false, "replace an existing bank (otherwise setup refuses)")
	return cmd
}

// bankSetup refuses before changing anything when a database already has
// a bank (without reset) or holds prepared branches (their locks would
// block the reset, and their money would be lost from the books).
func bankSetup(ctx context.Context, w io.Writer, rs []resource.Resource, accounts int, reset bool) error {
	var existing []string
	for _, r := range rs {
		ok, err := bank.SetUpAlready(ctx, r)
		if err != nil {
			return failedErrorf("%v", err)
		}
		if ok {
			existing = append(existing, r.Name())
		}
	}
	if len(existing) > 0 && !reset {
		return usageErrorf("a bank is already set up in %s; pass --reset to replace it, or run `threepc bank check`", strings.Join(existing, ", "))
	}
	if reset {
		rep, err := inspectBank(ctx, rs)
		if err != nil {
			return err
		}
		if left := unresolved(rep); len(left) > 0 {
			return usageErrorf("%s in doubt hold locks on the bank; run `threepc recover` before --reset", plural(len(left), "transaction"))
		}
	}
	for _, r := range rs {
		t0 := time.Now()
		if err := bank.Setup(ctx, r, accounts); err != nil {
			return failedErrorf("%v", err)
		}
		fmt.Fprintf(w, "%-12s %d accounts of %d (total %d) in %v\n", r.Name(), accounts, bank.InitialBalance,
			int64(accounts)*bank.InitialBalance, time.Since(t0).Round(time.Millisecond))
	}
	fmt.Fprintf(w, "seeded total: %d\n", int64(accounts)*bank.InitialBalance*int64(len(rs)))
	return nil
}

// runFlags are the workload flags shared by bank run and demo-child.
type runFlags struct {
	workers   int
	duration  time.Duration
	transfers int64
	protocol  string
	timeout   time.Duration
	seed      uint64
}

func (f *runFlags) register(cmd *cobra.Command, defProtocol string) {
	cmd.Flags().IntVar(&f.workers, "workers", 4, "concurrent transfers")
	cmd.Flags().DurationVar(&f.duration, "duration", 0, "run this long (default 10s unless --transfers is given)")
	cmd.Flags().Int64Var(&f.transfers, "transfers", 0, "stop after this many transfers")
	cmd.Flags().StringVar(&f.protocol, "protocol", defProtocol, "3pc, 2pc or handwritten2pc")
	cmd.Flags().DurationVar(&f.timeout, "timeout", 5*time.Second, "transaction timeout: breaks distributed deadlocks")
	cmd.Flags().Uint64Var(&f.seed, "seed", 0, "random seed (0: random)")
}

func (f *runFlags) validate() (bank.Protocol, error) {
	p, err := bank.ParseProtocol(f.protocol)
	if err != nil {
		return "", usageErrorf("--protocol: %v", err)
	}
	if !p.Atomic() {
		return "", usageErrorf("--protocol local is not atomic and would break the bank's books; use it with `threepc bench`")
	}
	if f.workers <= 0 || f.workers > 64 {
		return "", usageErrorf("--workers must be 1 to 64, got %d", f.workers)
	}
	if f.timeout <= 0 {
		return "", usageErrorf("--timeout must be positive")
	}
	if f.duration < 0 || f.transfers < 0 {
		return "", usageErrorf("--duration and --transfers must not be negative")
	}
	if f.duration == 0 && f.transfers == 0 {
		f.duration = 10 * time.Second
	}
	return p, nil
}

func newBankRunCmd(g *globals) *cobra.Command {
	var f runFlags
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Transfer random amounts between accounts in different databases",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			p, err := f.validate()
			if err != nil {
				return err
			}
			rs, err := openResources(ctx, g.dbs, openOpts{min: 2})
			if err != nil {
				return err
			}
			defer closeResources(rs)
			sizePools(rs, f.workers)
			w, err := bank.New(ctx, bank.Config{Resources: rs, Protocol: p, Timeout: f.timeout, Phases: true})
			if err != nil {
				if errors.Is(err, bank.ErrNotSetUp) {
					return usageErrorf("%v", err)
				}
				return failedErrorf("%v", err)
			}
			st := runWorkload(ctx, w, p, f)
			printStats(os.Stdout, st, p, f.workers)
			if ctx.Err() != nil {
				return failedErrorf("interrupted; run `threepc recover` and `threepc bank check`")
			}
			if n := st.Counts[bank.InDoubt] + st.Counts[bank.CommitPending]; n > 0 {
				fmt.Printf("%d transfers are left to recovery: run `threepc recover`\n", n)
			}
			return nil
		},
	}
	f.register(cmd, "3pc")
	return cmd
}

func runWorkload(ctx context.Context, w *bank.Workload, p bank.Protocol, f runFlags) *bank.Stats {
	onResult, stop := runProgress(ctx, string(p), f.duration, f.transfers)
	st := w.Run(ctx, bank.RunOptions{Workers: f.workers, Duration: f.duration, Transfers: f.transfers, Seed: f.seed, OnResult: onResult})
	stop()
	return st
}

func newBankCheckCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "check",
		Short: "Exit 0 only if the total balance equals the seeded total and nothing is in doubt",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			rs, err := openResources(ctx, g.dbs, openOpts{min: 2})
			if err != nil {
				return err
			}
			defer closeResources(rs)
			return bankCheck(ctx, os.Stdout, rs)
		},
	}
}

// bankCheck prints the books and the verdict.
func bankCheck(ctx context.Context, w io.Writer, rs []resource.Resource) error {
	var total, seeded int64
	tw := newTable(w)
	fmt.Fprintln(tw, "DATABASE\tACCOUNTS\tSEEDED\tTOTAL")
	for _, r := range rs {
		st, err := bank.Read(ctx, r)
		if err != nil {
			if errors.Is(err, bank.ErrNotSetUp) {
				return usageErrorf("%v", err)
			}
			return failedErrorf("%v", err)
		}
		total += st.Total
		seeded += st.Seeded
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\n", r.Name(), st.Rows, st.Seeded, st.Total)
	}
	fmt.Fprintf(tw, "all\t\t%d\t%d\n", seeded, total)
	_ = tw.Flush()
	rep, err := inspectBank(ctx, rs)
	if err != nil {
		return err
	}
	left := unresolved(rep)
	fmt.Fprintf(w, "seeded total %d, current total %d, %s in doubt\n", seeded, total, plural(len(left), "transaction"))
	switch {
	case len(left) > 0 || len(rep.Unreachable) > 0:
		printReport(w, &recovery.Report{Transactions: left}, true)
		return inDoubtErrorf("%s in doubt (their money is not on the books yet): run `threepc recover`, then check again", plural(len(left), "transaction"))
	case total != seeded:
		return failedErrorf("NOT conserved: total %d != seeded %d (off by %+d)", total, seeded, total-seeded)
	}
	fmt.Fprintf(w, "conserved: %d = %d, nothing in doubt\n", total, seeded)
	return nil
}

// inspectBank runs a recovery scan that changes nothing, with the default
// horizon, for the bank commands' "nothing in doubt" checks.
func inspectBank(ctx context.Context, rs []resource.Resource) (*recovery.Report, error) {
	sc, err := recovery.New(rs, recovery.WithLogger(quietLogger()))
	if err != nil {
		return nil, usageErrorf("%v", err)
	}
	rep, err := sc.Inspect(ctx)
	if err != nil {
		return nil, failedErrorf("%v", err)
	}
	return rep, nil
}
