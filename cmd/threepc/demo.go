package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/threepc/threepc/cmd/threepc/internal/bank"
	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/recovery"
	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

// demoDB is the database the demo creates on the servers it starts.
const demoDB = "threepc_demo"

type demoOpts struct {
	pg, mysql string
	keep      bool
	duration  time.Duration
	workers   int
	accounts  int
	killAfter int
	killAt    string
	namespace string
}

func newDemoCmd(g *globals) *cobra.Command {
	var o demoOpts
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Zero-configuration tour: throwaway servers, 3PC transfers, a killed coordinator, recovery, verified books",
		Long: `demo starts throwaway PostgreSQL and MariaDB servers (or uses --pg and
--mysql), migrates them, seeds a bank, runs cross-database transfers with
three-phase commit, then starts a coordinator child process that kills
itself with SIGKILL in the middle of the protocol. It shows the prepared
branches left behind, runs recovery, and verifies that money is conserved
and nothing is in doubt.

The servers are stopped and their files removed at the end (also on
Ctrl-C); --keep leaves them running until Ctrl-C and prints how to connect.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(g.dbs) > 0 {
				return usageErrorf("demo takes --pg and --mysql, not --db")
			}
			if (o.pg == "") != (o.mysql == "") {
				return usageErrorf("give both --pg and --mysql, or neither (to start throwaway servers)")
			}
			if o.workers < 1 || o.workers > 32 || o.accounts < 1 || o.killAfter < 1 || o.duration <= 0 {
				return usageErrorf("--workers (1-32), --accounts, --kill-after and --duration must be positive")
			}
			if !validFailpoint(o.killAt) {
				return usageErrorf("--kill-at %q: want one of %v", o.killAt, txmanager.Failpoints())
			}
			o.namespace = g.namespace
			return demo(cmd.Context(), os.Stdout, o)
		},
	}
	cmd.Flags().StringVar(&o.pg, "pg", "", "use this PostgreSQL URL (max_prepared_transactions > 0) instead of a throwaway server")
	cmd.Flags().StringVar(&o.mysql, "mysql", "", "use this MariaDB/MySQL URL instead of a throwaway server")
	cmd.Flags().BoolVar(&o.keep, "keep", false, "leave the throwaway servers running (until Ctrl-C) and print how to connect")
	cmd.Flags().DurationVar(&o.duration, "duration", 3*time.Second, "how long the first transfer run lasts")
	cmd.Flags().IntVar(&o.workers, "workers", 4, "concurrent transfers")
	cmd.Flags().IntVar(&o.accounts, "accounts", 1000, "accounts per database")
	cmd.Flags().IntVar(&o.killAfter, "kill-after", 20, "the child coordinator kills itself at the failpoint of this transaction")
	cmd.Flags().StringVar(&o.killAt, "kill-at", string(txmanager.AfterDecide), "the failpoint at which the child kills itself")
	return cmd
}

func validFailpoint(s string) bool {
	for _, fp := range txmanager.Failpoints() {
		if string(fp) == s {
			return true
		}
	}
	return false
}

func demo(ctx context.Context, out io.Writer, o demoOpts) (err error) {
	fmt.Fprintln(out, "threepc demo: a bank spread over PostgreSQL and MariaDB; every transfer debits one database and credits the other, atomically.")
	pgURL, myURL := o.pg, o.mysql
	var servers []*harness.Server
	if pgURL == "" {
		defer func() {
			for _, s := range servers {
				_ = s.Close()
			}
			if len(servers) > 0 {
				fmt.Fprintln(out, "==> servers stopped, temporary files removed")
			}
		}()
		err := step(out, "Starting throwaway PostgreSQL and MariaDB servers", func() error {
			var mu sync.Mutex
			errs := make([]error, 2)
			var wg sync.WaitGroup
			for i, k := range []harness.Kind{harness.Postgres, harness.MariaDB} {
				wg.Go(func() {
					s, err := harness.Start(ctx, k, harness.Options{})
					if err == nil {
						mu.Lock()
						servers = append(servers, s)
						mu.Unlock()
						err = s.CreateDatabase(ctx, demoDB)
					}
					errs[i] = err
				})
			}
			wg.Wait()
			return errors.Join(errs...)
		})
		if err != nil {
			if errors.Is(err, harness.ErrBinariesMissing) {
				return usageErrorf("%v (install them with scripts/install-deps.sh, or pass --pg and --mysql URLs)", err)
			}
			return failedErrorf("%v", err)
		}
		for _, s := range servers {
			if s.Kind() == harness.Postgres {
				pgURL = s.URL(demoDB)
			} else {
				myURL = s.URL(demoDB)
			}
			fmt.Fprintf(out, "    %-8s %s\n", s.Kind(), s.URL(demoDB))
		}
	}
	specs := []string{"pg=" + pgURL, "maria=" + myURL}

	var rs []resource.Resource
	if err := step(out, "Checking the databases", func() error {
		var err error
		rs, err = openResources(ctx, specs, openOpts{min: 2, migrationsOK: true})
		return err
	}); err != nil {
		return err
	}
	defer closeResources(rs)
	sizePools(rs, o.workers)
	if err := step(out, "Creating the marker table (threepc migrate)", func() error {
		return migrateAll(ctx, rs, func(string, ...any) {})
	}); err != nil {
		return err
	}
	if o.pg != "" {
		// Existing servers may hold what an interrupted earlier demo left.
		if err := step(out, "Finishing what earlier runs left in doubt", func() error {
			sc, err := recovery.New(rs, recovery.WithHorizon(0), recovery.WithInstanceID(instanceID("demo")), recovery.WithNamespace(o.namespace))
			if err != nil {
				return err
			}
			_, _, err = recoverUntil(ctx, sc, 10*time.Second, nil)
			return err
		}); err != nil {
			return failedErrorf("%v", err)
		}
	}
	seeded := int64(o.accounts) * bank.InitialBalance * 2
	if err := step(out, fmt.Sprintf("Seeding the bank: %d accounts of %d in each database (total %d)", o.accounts, bank.InitialBalance, seeded), func() error {
		return bankSetup(ctx, io.Discard, rs, o.accounts, true, o.namespace)
	}); err != nil {
		return err
	}

	// 1. Transfers with 3PC.
	fmt.Fprintf(out, "\n==> Transferring money with three-phase commit for %v (%d workers)\n", o.duration, o.workers)
	w, err := bank.New(ctx, bank.Config{Resources: rs, Protocol: bank.ThreePC, Phases: true, Timeout: 5 * time.Second, Namespace: o.namespace})
	if err != nil {
		return failedErrorf("%v", err)
	}
	st := runWorkload(ctx, w, bank.ThreePC, runFlags{workers: o.workers, duration: o.duration})
	if err := w.Close(context.WithoutCancel(ctx)); err != nil {
		return failedErrorf("%v", err)
	}
	if ctx.Err() != nil {
		return failedErrorf("interrupted")
	}
	printStats(indent(out), st, bank.ThreePC, o.workers)

	// 2. A coordinator that dies in the middle of the protocol.
	fmt.Fprintf(out, "\n==> Starting a coordinator child process that SIGKILLs itself at %q of its transaction #%d\n", o.killAt, o.killAfter)
	childOut, err := runDemoChild(ctx, specs, o)
	for _, line := range strings.Split(strings.TrimSpace(childOut), "\n") {
		if line != "" {
			fmt.Fprintf(out, "    child: %s\n", line)
		}
	}
	if err != nil {
		return err
	}

	// 3. What it left behind.
	fmt.Fprintln(out, "\n==> Inspecting the databases (threepc inspect): what the dead coordinator left")
	sc, err := recovery.New(rs, recovery.WithHorizon(0), recovery.WithInstanceID(instanceID("demo")), recovery.WithLogger(quietLogger()), recovery.WithNamespace(o.namespace))
	if err != nil {
		return failedErrorf("%v", err)
	}
	isc, err := recovery.New(rs, recovery.WithHorizon(0), recovery.WithLogger(quietLogger()), recovery.WithNamespace(o.namespace))
	if err != nil {
		return failedErrorf("%v", err)
	}
	rep, err := isc.Inspect(ctx)
	if err != nil {
		return failedErrorf("%v", err)
	}
	printReport(indent(out), rep, true, false)
	prepared, leftTx := 0, 0
	for _, t := range rep.Transactions {
		prepared += len(t.Branches)
		if !retained(t) {
			leftTx++
		}
	}
	before := bookTotal(ctx, rs)
	fmt.Fprintf(out, "    %s left prepared, holding their row locks; total on the books now: %d of %d\n",
		plural(prepared, "branch"), before, seeded)
	if n := len(unresolved(rep)); n > 1 {
		fmt.Fprintf(out, "    %s in doubt from one dead coordinator: %s\n", plural(n, "transaction"), whySeveral(o))
	}

	// 4. Recovery.
	fmt.Fprintln(out, "\n==> Running recovery (threepc recover; the coordinator is known dead, so no in-flight horizon)")
	all, last, err := recoverUntil(ctx, sc, 30*time.Second, nil)
	if err != nil {
		return failedErrorf("%v", err)
	}
	printReport(indent(out), all, false, false)
	if left := unresolved(last); len(left) > 0 {
		return inDoubtErrorf("%s still in doubt after recovery", plural(len(left), "transaction"))
	}

	// 5. The books.
	fmt.Fprintln(out, "\n==> Checking the books (threepc bank check)")
	var buf bytes.Buffer
	cerr := bankCheck(ctx, &buf, rs, o.namespace)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	for _, l := range lines[:len(lines)-1] {
		fmt.Fprintln(out, "    "+l)
	}

	fmt.Fprintln(out, "\nWhat happened:")
	fmt.Fprintf(out, "  - %d transfers committed across both databases with 3PC at %.0f tx/s, p50 %v, p99 %v",
		st.Counts[bank.Committed], st.Throughput(), fmtDur(bank.Percentile(st.Latencies, 50)), fmtDur(bank.Percentile(st.Latencies, 99)))
	if len(st.Phases) > 0 && len(st.Phases[0]) > 0 {
		var ps []string
		for i, n := range bank.PhaseNames {
			ps = append(ps, fmt.Sprintf("%s %v", n, fmtDur(bank.Percentile(st.Phases[i], 50))))
		}
		fmt.Fprintf(out, "; p50 per phase: %s", strings.Join(ps, ", "))
	}
	fmt.Fprintln(out)
	fmt.Fprintf(out, "  - a coordinator was killed at %q, leaving %s prepared in %s", o.killAt, plural(prepared, "branch"), plural(leftTx, "transaction"))
	if leftTx > 1 {
		fmt.Fprintf(out, " (one coordinator, %d workers: each had a transfer in flight)", o.workers)
	}
	fmt.Fprintln(out)
	fmt.Fprintf(out, "  - recovery finished them from the marker rows in the databases alone: %s\n", actionSummary(all))
	if cerr != nil {
		fmt.Fprintln(out, lines[len(lines)-1])
		return cerr
	}
	fmt.Fprintln(out, lines[len(lines)-1])

	if o.keep && len(servers) > 0 {
		fmt.Fprintln(out, "\nThe servers keep running until you press Ctrl-C. Connect with:")
		for _, s := range servers {
			u := s.URL(demoDB)
			if s.Kind() == harness.Postgres {
				fmt.Fprintf(out, "  psql '%s'\n", u)
			} else {
				host, port := splitHostPort(s.Addr())
				fmt.Fprintf(out, "  mariadb -h %s -P %s -u root %s\n", host, port, demoDB)
			}
		}
		fmt.Fprintf(out, "  threepc bank check --db '%s' --db '%s'\n", specs[0], specs[1])
		<-ctx.Done()
		fmt.Fprintln(out)
	}
	return nil
}

// whySeveral explains why one killed coordinator leaves more than one
// transaction behind.
func whySeveral(o demoOpts) string {
	return fmt.Sprintf("it ran %d workers, and each had a transfer in flight when the process died, stopped at whatever step it had reached; only the one at %q was stopped there on purpose. Recovery finishes each by the rows it left",
		o.workers, o.killAt)
}

func splitHostPort(addr string) (string, string) {
	i := strings.LastIndex(addr, ":")
	if i < 0 {
		return addr, ""
	}
	return addr[:i], addr[i+1:]
}

func actionSummary(rep *recovery.Report) string {
	counts := map[recovery.Action]int{}
	for _, t := range rep.Transactions {
		counts[t.Action]++
	}
	var parts []string
	for _, a := range []struct {
		a    recovery.Action
		what string
	}{
		{recovery.ActionCommit, "committed (a precommit row proved the decision)"},
		{recovery.ActionFence, "fenced and rolled back (no decision was recorded)"},
		{recovery.ActionRollback, "rolled back (abort row)"},
		{recovery.ActionCollect, "already finished (leftover marker rows deleted)"},
		{recovery.ActionHeuristic, "HEURISTIC (a branch contradicts the decision; see above)"},
	} {
		if n := counts[a.a]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, a.what))
		}
	}
	if len(parts) == 0 {
		return "nothing to do"
	}
	return strings.Join(parts, ", ")
}

func bookTotal(ctx context.Context, rs []resource.Resource) int64 {
	var total int64
	for _, r := range rs {
		st, err := bank.Read(ctx, r)
		if err == nil {
			total += st.Total
		}
	}
	return total
}

// indent prefixes every line written with four spaces.
func indent(w io.Writer) io.Writer { return &indenter{w: w, bol: true} }

type indenter struct {
	w   io.Writer
	bol bool
}

func (i *indenter) Write(p []byte) (int, error) {
	var b bytes.Buffer
	for _, c := range p {
		if i.bol && c != '\n' {
			b.WriteString("    ")
		}
		b.WriteByte(c)
		i.bol = c == '\n'
	}
	if _, err := i.w.Write(b.Bytes()); err != nil {
		return 0, err
	}
	return len(p), nil
}

// runDemoChild re-executes this binary as a coordinator that kills
// itself, and returns its output. Dying by SIGKILL is success.
func runDemoChild(ctx context.Context, specs []string, o demoOpts) (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", failedErrorf("finding this program to re-run it: %v", err)
	}
	args := []string{"demo-child", "--kill-at", o.killAt, "--kill-after", fmt.Sprint(o.killAfter),
		"--workers", fmt.Sprint(o.workers), "--duration", "60s", "--log-level", "error", "--namespace", o.namespace}
	for _, s := range specs {
		args = append(args, "--db", s)
	}
	cmd := exec.CommandContext(ctx, exe, args...)
	var buf bytes.Buffer
	cmd.Stdout = &buf
	cmd.Stderr = &buf
	err = cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return buf.String() + "(died of SIGKILL, as planned)\n", nil
		}
	}
	if err == nil {
		err = errors.New("exited normally")
	}
	return buf.String(), failedErrorf("the child coordinator did not die at the failpoint: %v", err)
}

func newDemoChildCmd(g *globals) *cobra.Command {
	var (
		f         runFlags
		killAt    string
		killAfter int64
	)
	cmd := &cobra.Command{
		Use:    "demo-child",
		Short:  "A coordinator that SIGKILLs itself at a failpoint (used by demo and the tests)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			p, err := f.validate()
			if err != nil {
				return err
			}
			if !validFailpoint(killAt) {
				return usageErrorf("--kill-at %q: want one of %v", killAt, txmanager.Failpoints())
			}
			rs, err := openResources(ctx, g.dbs, openOpts{min: 2})
			if err != nil {
				return err
			}
			defer closeResources(rs)
			sizePools(rs, f.workers)
			var hits, committed atomic.Int64
			hook := func(_ context.Context, fp txmanager.Failpoint, gtid, res string) error {
				if string(fp) == killAt && hits.Add(1) == killAfter {
					fmt.Printf("%d transfers committed; SIGKILL now at %s of transaction %s (resource %s)\n",
						committed.Load(), fp, gtid, res)
					_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
					select {} // never returns
				}
				return nil
			}
			w, err := bank.New(ctx, bank.Config{Resources: rs, Protocol: p, Timeout: f.timeout, Failpoint: hook, Namespace: g.namespace})
			if err != nil {
				return usageErrorf("%v", err)
			}
			w.Run(ctx, bank.RunOptions{Workers: f.workers, Duration: f.duration, Transfers: f.transfers, Seed: f.seed,
				OnResult: func(r bank.Result) {
					if r.Outcome == bank.Committed {
						committed.Add(1)
					}
				}})
			return failedErrorf("failpoint %s was reached %d times, never the %dth", killAt, hits.Load(), killAfter)
		},
	}
	f.register(cmd, "3pc")
	cmd.Flags().StringVar(&killAt, "kill-at", string(txmanager.AfterDecide), "failpoint to die at")
	cmd.Flags().Int64Var(&killAfter, "kill-after", 20, "die at the failpoint's n-th hit")
	return cmd
}
