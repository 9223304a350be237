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
		Short: "Create the bank tables (accounts, ledger) in every database and seed --accounts rows of balance 1000",
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
			return bankSetup(ctx, os.Stdout, rs, accounts, reset, g.namespace)
		},
	}
	cmd.Flags().IntVar(&accounts, "accounts", 1000, "accounts per database")
	cmd.Flags().BoolVar(&reset, "reset", false, "replace an existing bank (otherwise setup refuses)")
	return cmd
}

// bankSetup refuses before changing anything when a database already has
// a bank (without reset) or holds prepared branches (their locks would
// block the reset, and their money would be lost from the books).
func bankSetup(ctx context.Context, w io.Writer, rs []resource.Resource, accounts int, reset bool, namespace string) error {
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
		rep, err := inspectBank(ctx, rs, namespace)
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
			w, err := bank.New(ctx, bank.Config{Resources: rs, Protocol: p, Timeout: f.timeout, Phases: true, Namespace: g.namespace})
			if err != nil {
				if errors.Is(err, bank.ErrNotSetUp) {
					return usageErrorf("%v", err)
				}
				return failedErrorf("%v", err)
			}
			st := runWorkload(ctx, w, p, f)
			cerr := w.Close(context.WithoutCancel(ctx))
			printStats(os.Stdout, st, p, f.workers)
			if ctx.Err() != nil {
				return failedErrorf("interrupted; run `threepc recover` and `threepc bank check`")
			}
			if n := st.Counts[bank.Heuristic]; n > 0 {
				return heuristicErrorf("%s with a heuristic outcome (a branch contradicts the commit decision): run `threepc inspect` and do what it says", plural(int(n), "transfer"))
			}
			if n := st.Counts[bank.InDoubt] + st.Counts[bank.CommitPending]; n > 0 {
				fmt.Printf("%d transfers are left to recovery: run `threepc recover`\n", n)
			}
			if cerr != nil {
				return failedErrorf("%v", cerr)
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
		Short: "Exit 0 only if money is conserved, every transfer is in all its databases or none, every told outcome holds, and nothing is in doubt",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			rs, err := openResources(ctx, g.dbs, openOpts{min: 2})
			if err != nil {
				return err
			}
			defer closeResources(rs)
			return bankCheck(ctx, os.Stdout, rs, g.namespace)
		},
	}
}

// bankCheck prints the books, the ledger's verdict and the overall one:
// 4 if any heuristic outcome was told or is found, 1 if a transfer is
// partial or a told outcome is contradicted, 3 if something is in doubt,
// 1 if money is not conserved.
func bankCheck(ctx context.Context, w io.Writer, rs []resource.Resource, namespace string) error {
	var total, seeded int64
	states := map[string]bank.State{}
	for _, r := range rs {
		st, err := bank.Read(ctx, r)
		if err != nil {
			if errors.Is(err, bank.ErrNotSetUp) {
				return usageErrorf("%v", err)
			}
			return failedErrorf("%v", err)
		}
		states[r.Name()] = st
		total += st.Total
		seeded += st.Seeded
	}
	rep, err := inspectBank(ctx, rs, namespace)
	if err != nil {
		return err
	}
	left := unresolved(rep)
	inDoubt := map[string]bool{}
	for _, t := range left {
		inDoubt[t.GTID] = true
	}
	lg, err := bank.CheckLedger(ctx, rs, func(id string) bool { return inDoubt[id] })
	if err != nil {
		return failedErrorf("%v", err)
	}
	tw := newTable(w)
	fmt.Fprintln(tw, "DATABASE\tACCOUNTS\tSEEDED\tTOTAL\tLEDGER ROWS\tLEDGER SUM")
	var ledgerSum int64
	for _, r := range rs {
		st := states[r.Name()]
		ledgerSum += lg.LedgerSum[r.Name()]
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%+d\n", r.Name(), st.Rows, st.Seeded, st.Total, lg.LedgerRows[r.Name()], lg.LedgerSum[r.Name()])
	}
	fmt.Fprintf(tw, "all\t\t%d\t%d\t\t%+d\n", seeded, total, ledgerSum)
	_ = tw.Flush()
	printLedger(w, lg)
	heuristic := len(lg.Heuristic) + len(rep.Heuristic())
	fmt.Fprintf(w, "seeded total %d, current total %d, %s in doubt, %s\n", seeded, total, plural(len(left), "transaction"), plural(heuristic, "heuristic outcome"))
	if rep.Foreign > 0 {
		fmt.Fprintf(w, "%s of other namespaces are prepared in these databases (their money is not on the books yet)\n", plural(rep.Foreign, "branch"))
	}
	switch {
	case heuristic > 0:
		printHeuristics(w, rep.Heuristic())
		return heuristicErrorf("%s: a branch contradicts its transaction's decision; run `threepc inspect` and do what it says", plural(heuristic, "heuristic outcome"))
	case lg.Failed():
		return failedErrorf("NOT atomic: %s, %s (see the ledger above)", plural(len(lg.Partial), "partial transfer"), plural(len(lg.Contradict), "contradicted outcome"))
	case len(left) > 0 || len(rep.Unreachable) > 0:
		printReport(w, &recovery.Report{Transactions: left}, true, false)
		return inDoubtErrorf("%s in doubt (their money is not on the books yet): run `threepc recover`, then check again", plural(len(left), "transaction"))
	case total != seeded && rep.Foreign > 0:
		return inDoubtErrorf("NOT conserved: total %d != seeded %d (off by %+d), while %s of other namespaces are prepared: recover those (--namespace), then check again", total, seeded, total-seeded, plural(rep.Foreign, "branch"))
	case total != seeded:
		return failedErrorf("NOT conserved: total %d != seeded %d (off by %+d)", total, seeded, total-seeded)
	}
	fmt.Fprintf(w, "conserved: %d = %d, nothing in doubt\n", total, seeded)
	return nil
}

// printLedger prints the ledger's counts, then one line per partial
// transfer and per contradicted outcome (a transfer can be both).
func printLedger(w io.Writer, lg *bank.LedgerReport) {
	var told []string
	for _, o := range []bank.Told{bank.ToldCommitted, bank.ToldAborted, bank.ToldInDoubt, bank.ToldCommitPending, bank.ToldHeuristic, bank.ToldFailed, bank.ToldNothing} {
		told = append(told, fmt.Sprintf("%d %s", lg.Told[o], o))
	}
	fmt.Fprintf(w, "ledger: %d transfers; told: %s\n", lg.Transfers, strings.Join(told, ", "))
	fmt.Fprintf(w, "ledger: %s, %s", plural(len(lg.Partial), "partial transfer"), plural(len(lg.Contradict), "contradicted outcome"))
	if len(lg.Unsettled) > 0 {
		fmt.Fprintf(w, ", %d not judged (in doubt: recovery has not finished them)", len(lg.Unsettled))
	}
	if lg.Unjudgeable > 0 {
		fmt.Fprintf(w, ", %d not judged (they touch %s, not given with --db)", lg.Unjudgeable, strings.Join(lg.UnknownDB, ", "))
	}
	fmt.Fprintln(w)
	const maxLines = 20
	for i, t := range lg.Partial {
		if i == maxLines {
			fmt.Fprintf(w, "  ... %d more partial transfers\n", len(lg.Partial)-maxLines)
			break
		}
		fmt.Fprintf(w, "  partial      %s  %s  in %s, not in %s (told %s)%s\n", t.ID, t.Protocol, strings.Join(t.Present, ","), strings.Join(t.Missing(), ","), t.Told, detail(t))
	}
	for i, t := range lg.Contradict {
		if i == maxLines {
			fmt.Fprintf(w, "  ... %d more contradicted outcomes\n", len(lg.Contradict)-maxLines)
			break
		}
		fmt.Fprintf(w, "  contradicted %s  %s  %s%s\n", t.ID, t.Protocol, t.Why, detail(t))
	}
	for _, t := range lg.Heuristic {
		fmt.Fprintf(w, "  heuristic    %s  %s  in %s (told: %s)\n", t.ID, t.Protocol, orNone(strings.Join(t.Present, ",")), t.Detail)
	}
}

func detail(t bank.LedgerTransfer) string {
	if t.Detail == "" {
		return ""
	}
	return ": " + t.Detail
}

func orNone(s string) string {
	if s == "" {
		return "no database"
	}
	return s
}

// inspectBank runs a recovery scan that changes nothing, with the default
// horizon, for the bank commands' "nothing in doubt" checks.
func inspectBank(ctx context.Context, rs []resource.Resource, namespace string) (*recovery.Report, error) {
	sc, err := recovery.New(rs, recovery.WithLogger(quietLogger()), recovery.WithNamespace(namespace))
	if err != nil {
		return nil, usageErrorf("%v", err)
	}
	rep, err := sc.Inspect(ctx)
	if err != nil {
		return nil, failedErrorf("%v", err)
	}
	return rep, nil
}
