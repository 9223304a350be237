package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/threepc/threepc/recovery"
	"github.com/threepc/threepc/resource"
)

// scannerOpts are the options every scanner of the command takes.
func (g *globals) scannerOpts(opts ...recovery.Option) []recovery.Option {
	return append([]recovery.Option{recovery.WithNamespace(g.namespace)}, opts...)
}

func newRecoverCmd(g *globals) *cobra.Command {
	var (
		horizon time.Duration
		wait    time.Duration
		all     bool
	)
	cmd := &cobra.Command{
		Use:   "recover",
		Short: "Finish transactions whose coordinator died (exit 3 if anything is left in doubt)",
		Long: `recover scans every database for prepared branches and marker rows and
finishes each global transaction as the protocol says: commit when a
precommit row exists anywhere, roll back when the primary holds an abort
row, fence (abort row at the primary) and roll back when there is no row.
Every transaction younger than --horizon (the in-flight horizon) is left
alone, whatever its rows say: its coordinator may still be running it.
Safe to run at any time, concurrently with live coordinators and other
recover processes. Only the branches and rows of --namespace are touched.

With --wait, a line per scan says what is left (updated in place on a
terminal).

A heuristic outcome (a branch of a transaction decided to commit is gone
without the evidence of its commit) is printed with what to do; its rows
are kept.

Exit 0 when nothing is left in doubt, 3 otherwise, 4 on a heuristic outcome.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			rs, err := openResources(ctx, g.dbs, openOpts{min: 1})
			if err != nil {
				return err
			}
			defer closeResources(rs)
			sc, err := recovery.New(rs, g.scannerOpts(recovery.WithHorizon(horizon), recovery.WithInstanceID(instanceID("recover")))...)
			if err != nil {
				return usageErrorf("%v", err)
			}
			var onScan func(int, *recovery.Report, time.Duration)
			done := func() {}
			if wait > 0 {
				onScan, done = scanProgress(os.Stdout, stdoutIsTTY)
			}
			seen, last, err := recoverUntil(ctx, sc, wait, onScan)
			done()
			if err != nil {
				return failedErrorf("%v", err)
			}
			printReport(os.Stdout, seen, false, all)
			return recoverVerdict(os.Stdout, last, horizon)
		},
	}
	cmd.Flags().DurationVar(&horizon, "horizon", recovery.DefaultHorizon, "leave transactions younger than this alone (their coordinator may still be running); 0 when you know no coordinator runs")
	cmd.Flags().DurationVar(&wait, "wait", 0, "keep scanning (with backoff) until nothing is in doubt or this much time has passed")
	cmd.Flags().BoolVar(&all, "all", false, "also list finished transactions whose rows are kept for the retention period")
	return cmd
}

func instanceID(role string) string {
	host, _ := os.Hostname()
	return fmt.Sprintf("threepc-%s@%s/%d", role, host, os.Getpid())
}

// recoverUntil scans once, then again while something is unresolved and
// wait allows. It returns every transaction seen (the latest report of
// each) and the last report. onScan, if not nil, gets every scan's
// number and report and the pause before the next scan (0 after the
// last).
func recoverUntil(ctx context.Context, sc *recovery.Scanner, wait time.Duration, onScan func(n int, rep *recovery.Report, next time.Duration)) (*recovery.Report, *recovery.Report, error) {
	deadline := time.Now().Add(wait)
	seen := map[string]recovery.TxReport{}
	var last *recovery.Report
	pause := 100 * time.Millisecond
	for n := 1; ; n++ {
		rep, err := sc.ScanOnce(ctx)
		if err != nil {
			return nil, nil, err
		}
		last = rep
		for _, t := range rep.Transactions {
			if prev, ok := seen[t.GTID]; ok && t.Action == recovery.ActionWait && prev.Action != recovery.ActionWait {
				continue // keep what an earlier scan did
			}
			seen[t.GTID] = t
		}
		final := len(unresolved(rep)) == 0 && len(rep.Unreachable) == 0 || !time.Now().Add(pause).Before(deadline)
		if onScan != nil {
			next := pause
			if final {
				next = 0
			}
			onScan(n, rep, next)
		}
		if final {
			break
		}
		select {
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-time.After(pause):
		}
		pause = min(pause*2, 2*time.Second)
	}
	all := *last
	all.Transactions = nil
	for _, g := range slices.Sorted(maps.Keys(seen)) {
		all.Transactions = append(all.Transactions, seen[g])
	}
	return &all, last, nil
}

// unresolved returns the transactions of a report that still have a
// prepared branch or could not be decided. For a dry run (Inspect) every
// prepared branch counts.
func unresolved(rep *recovery.Report) []recovery.TxReport {
	var out []recovery.TxReport
	for _, t := range rep.Transactions {
		if isUnresolved(t) {
			out = append(out, t)
		}
	}
	return out
}

func isUnresolved(t recovery.TxReport) bool {
	if t.Action == recovery.ActionInDoubt || t.Action == recovery.ActionHeuristic || t.Err != nil {
		return true
	}
	for _, b := range t.Branches {
		if !b.Done {
			return true
		}
	}
	return false
}

func recoverVerdict(w io.Writer, last *recovery.Report, horizon time.Duration) error {
	left := unresolved(last)
	young := 0
	for _, t := range left {
		if t.Action == recovery.ActionWait {
			young++
		}
	}
	for n, err := range last.Unreachable {
		fmt.Fprintf(w, "database %q could not be scanned: %s\n", n, oneLine(err.Error()))
	}
	switch {
	case len(last.Heuristic()) > 0:
		return heuristicErrorf("%s with a heuristic outcome (a branch contradicts the decision); do what the table above says, then run recover again", plural(len(last.Heuristic()), "transaction"))
	case len(left) == 0 && len(last.Unreachable) == 0:
		fmt.Fprintln(w, "nothing in doubt")
		return nil
	case young == len(left) && len(last.Unreachable) == 0:
		return inDoubtErrorf("%s younger than the in-flight horizon (%v) left alone: a coordinator may still be running them; %s", plural(young, "transaction"), horizon, waitHint(left, horizon))
	}
	return inDoubtErrorf("%s left in doubt (oldest %v); see the table above, fix what it names and run recover again", plural(len(left), "transaction"), last.OldestInDoubt().Round(time.Second))
}

// waitHint says what to run about transactions left alone because they
// are younger than the in-flight horizon: wait past the horizon (recover
// --wait), or, when the coordinator is known dead, --horizon 0.
func waitHint(ts []recovery.TxReport, horizon time.Duration) string {
	youngest := horizon
	for _, t := range ts {
		youngest = min(youngest, t.Age)
	}
	// Past the horizon, plus a few seconds for MariaDB to hand over the
	// branches of a dead session.
	wait := (horizon - youngest + 10*time.Second).Round(time.Second)
	return fmt.Sprintf("run `threepc recover --wait %v` to finish them once they are older, or `threepc recover --horizon 0 --wait 20s` if you know their coordinator is dead", wait)
}

// isYoung reports whether the scanner left t alone for its age.
func isYoung(t recovery.TxReport, horizon time.Duration) bool {
	return t.Action == recovery.ActionWait && t.Age < horizon
}

// retained reports whether a transaction is finished and only waits for
// its rows' retention period (a committed tombstone or an abort row, no
// prepared branch): nothing to do, and after a busy hour thousands of
// them, so the table hides them unless --all.
func retained(t recovery.TxReport) bool {
	if t.Action != recovery.ActionWait || len(t.Branches) > 0 || t.Err != nil {
		return false
	}
	if strings.Contains(t.Reason, "retention") {
		return true
	}
	for _, m := range t.Markers {
		if m.State != resource.StateCommitted && m.State != resource.StateAbort {
			return false
		}
	}
	return len(t.Markers) > 0
}

// retainedReason is the one reason --all shows for a retained
// transaction, whatever its age: the scanner says "younger than the
// in-flight horizon" of a young one and "... kept for the retention
// period" of an older one, about the same finished transaction.
func retainedReason(t recovery.TxReport) string {
	switch t.Markers[t.Primary].State {
	case resource.StateAbort:
		return fmt.Sprintf("finished, rolled back: the primary's abort row is kept for the retention period (%s)", shortDur(recovery.DefaultRetention))
	case resource.StateCommitted:
		return fmt.Sprintf("finished, committed: the primary's tombstone is kept for the retention period (%s)", shortDur(recovery.DefaultTombstoneRetention))
	}
	return t.Reason
}

// shortDur prints whole hours and minutes without their zero parts
// ("24h", "15m").
func shortDur(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// scanProgress returns the onScan of recover --wait: one line per scan
// on w, or, on a terminal, one line updated in place (done clears it).
func scanProgress(w io.Writer, tty bool) (onScan func(int, *recovery.Report, time.Duration), done func()) {
	drawn := false
	onScan = func(n int, rep *recovery.Report, next time.Duration) {
		line := scanLine(n, rep, next)
		if tty {
			fmt.Fprint(w, "\r\033[K"+line)
			drawn = true
			return
		}
		fmt.Fprintln(w, line)
	}
	done = func() {
		if drawn {
			fmt.Fprint(w, "\r\033[K")
		}
	}
	return onScan, done
}

// scanLine sums up one scan of recover --wait.
func scanLine(n int, rep *recovery.Report, next time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "scan %d: %s", n, plural(len(rep.Transactions), "transaction"))
	if a := actionCounts(rep); a != "" {
		fmt.Fprintf(&b, " (%s)", a)
	}
	left := unresolved(rep)
	if len(left) > 0 {
		fmt.Fprintf(&b, ", %d in doubt (oldest %v)", len(left), oldest(left).Round(100*time.Millisecond))
	}
	for _, name := range slices.Sorted(maps.Keys(rep.Unreachable)) {
		fmt.Fprintf(&b, ", %s not scanned", name)
	}
	switch {
	case next > 0:
		fmt.Fprintf(&b, "; next scan in %v", next)
	case len(left) == 0 && len(rep.Unreachable) == 0:
		b.WriteString("; nothing in doubt")
	default:
		b.WriteString("; --wait is over")
	}
	return b.String()
}

// actionCounts is "commit 1, fence 2, wait 3": what a report did, in the
// protocol's order.
func actionCounts(rep *recovery.Report) string {
	counts := map[recovery.Action]int{}
	for _, t := range rep.Transactions {
		counts[t.Action]++
	}
	var parts []string
	for _, a := range []recovery.Action{recovery.ActionCommit, recovery.ActionRollback, recovery.ActionFence, recovery.ActionCollect, recovery.ActionWait, recovery.ActionInDoubt, recovery.ActionHeuristic} {
		if counts[a] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", a, counts[a]))
		}
	}
	return strings.Join(parts, ", ")
}

// printReport prints one line per transaction (retained ones only with
// all), then every heuristic outcome with what to do.
func printReport(w io.Writer, rep *recovery.Report, dry, all bool) {
	var shown []recovery.TxReport
	hidden := 0
	for _, t := range rep.Transactions {
		if !all && retained(t) {
			hidden++
			continue
		}
		shown = append(shown, t)
	}
	defer func() {
		if rep.Foreign > 0 {
			fmt.Fprintf(w, "%s of other namespaces left alone (--namespace selects a namespace)\n", plural(rep.Foreign, "prepared branch"))
		}
	}()
	switch {
	case len(shown) == 0 && hidden == 0:
		fmt.Fprintln(w, "no prepared branches and no marker rows found")
		return
	case len(shown) == 0:
		fmt.Fprintf(w, "no prepared branches; %s finished, their rows kept for the retention period (--all lists them)\n", plural(hidden, "transaction"))
		return
	}
	tw := newTable(w)
	act := "ACTION"
	if dry {
		act = "WOULD"
	}
	fmt.Fprintf(tw, "GTID\tAGE\tPRIMARY\tBRANCHES\tMARKERS\t%s\tREASON\n", act)
	for _, t := range shown {
		a := string(t.Action)
		if t.Action == recovery.ActionHeuristic {
			a = "HEURISTIC"
		}
		fmt.Fprintf(tw, "%s\t%v\t%s\t%s\t%s\t%s\t%s\n", t.GTID, t.Age.Round(100*time.Millisecond), t.Primary,
			branchList(t, dry), markerList(t), a, reason(t))
	}
	_ = tw.Flush()
	if hidden > 0 {
		fmt.Fprintf(w, "(%s finished, their rows kept for the retention period, not listed: --all lists them)\n", plural(hidden, "more transaction"))
	}
	if !dry {
		fmt.Fprintf(w, "%s: %s\n", plural(len(rep.Transactions), "transaction"), actionCounts(rep))
	}
	printHeuristics(w, rep.Heuristic())
}

// printHeuristics prints every heuristic outcome on its own, loudly: the
// branches lost and what to do about them.
func printHeuristics(w io.Writer, ts []recovery.TxReport) {
	for _, t := range ts {
		lost := strings.Join(t.Lost, ", ")
		if lost == "" {
			lost = "unknown"
		}
		fmt.Fprintf(w, "\n!!! HEURISTIC OUTCOME: transaction %s (primary %s, age %v): branch %s contradicts the decision\n",
			t.GTID, t.Primary, t.Age.Round(time.Second), lost)
		fmt.Fprintf(w, "    markers: %s\n", markerList(t))
		fmt.Fprintf(w, "    what to do: %s\n", oneLine(t.Reason))
	}
}

func branchList(t recovery.TxReport, dry bool) string {
	if len(t.Branches) == 0 {
		return "-"
	}
	var parts []string
	for _, b := range t.Branches {
		s := b.Resource + ":prepared"
		switch {
		case b.Done && (t.Action == recovery.ActionCommit):
			s = b.Resource + ":committed"
		case b.Done:
			s = b.Resource + ":rolled-back"
		case b.Err != nil:
			s = b.Resource + ":error"
		}
		_ = dry
		parts = append(parts, s)
	}
	return strings.Join(parts, ",")
}

func markerList(t recovery.TxReport) string {
	if len(t.Markers) == 0 {
		return "-"
	}
	var parts []string
	for _, n := range slices.Sorted(maps.Keys(t.Markers)) {
		parts = append(parts, n+":"+string(t.Markers[n].State))
	}
	return strings.Join(parts, ",")
}

func reason(t recovery.TxReport) string {
	if retained(t) {
		return retainedReason(t)
	}
	r := t.Reason
	if t.Err != nil {
		r += ": " + oneLine(t.Err.Error())
	}
	for _, b := range t.Branches {
		if b.Err != nil {
			r += "; " + b.Resource + ": " + oneLine(b.Err.Error())
		}
	}
	if r == "" {
		r = "-"
	}
	return r
}

func newInspectCmd(g *globals) *cobra.Command {
	var (
		horizon time.Duration
		all     bool
	)
	cmd := &cobra.Command{
		Use:   "inspect",
		Short: "Show in-doubt transactions and what recover would do, changing nothing (exit 3 if any, 4 on a heuristic outcome)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			rs, err := openResources(ctx, g.dbs, openOpts{min: 1})
			if err != nil {
				return err
			}
			defer closeResources(rs)
			sc, err := recovery.New(rs, g.scannerOpts(recovery.WithHorizon(horizon), recovery.WithLogger(quietLogger()))...)
			if err != nil {
				return usageErrorf("%v", err)
			}
			rep, err := sc.Inspect(ctx)
			if err != nil {
				return failedErrorf("%v", err)
			}
			printReport(os.Stdout, rep, true, all)
			fmt.Println()
			printPrepared(ctx, os.Stdout, rs, g.namespace)
			if h := rep.Heuristic(); len(h) > 0 {
				return heuristicErrorf("%s with a heuristic outcome: do what the table above says, then run threepc recover", plural(len(h), "transaction"))
			}
			if left := unresolved(rep); len(left) > 0 || len(rep.Unreachable) > 0 {
				return inDoubtErrorf("%s in doubt (oldest %v): %s", plural(len(left), "transaction"), oldest(left).Round(time.Second), inspectHint(left, rep, horizon))
			}
			fmt.Println("nothing in doubt")
			return nil
		},
	}
	cmd.Flags().DurationVar(&horizon, "horizon", recovery.DefaultHorizon, "the in-flight horizon recover would use")
	cmd.Flags().BoolVar(&all, "all", false, "also list finished transactions whose rows are kept for the retention period")
	return cmd
}

// inspectHint says what to run about what inspect found in doubt. Right
// after a coordinator died its transactions are younger than the
// in-flight horizon, which applies to every transaction: a plain recover
// would leave them alone too.
func inspectHint(left []recovery.TxReport, rep *recovery.Report, horizon time.Duration) string {
	var young []recovery.TxReport
	for _, t := range left {
		if isYoung(t, horizon) {
			young = append(young, t)
		}
	}
	switch {
	case len(young) == 0 || len(rep.Unreachable) > 0:
		return "run threepc recover"
	case len(young) == len(left):
		return fmt.Sprintf("all younger than the in-flight horizon (%v), within which recover leaves every transaction to its coordinator; %s", horizon, waitHint(young, horizon))
	}
	return fmt.Sprintf("%d of them younger than the in-flight horizon (%v), within which recover leaves every transaction to its coordinator; %s", len(young), horizon, waitHint(young, horizon))
}

func oldest(ts []recovery.TxReport) time.Duration {
	var o time.Duration
	for _, t := range ts {
		o = max(o, t.Age)
	}
	return o
}

// printPrepared prints, per database, how many prepared transactions the
// server holds and how old they are: forgotten ones hold locks and, in
// PostgreSQL, hold back VACUUM.
func printPrepared(ctx context.Context, w io.Writer, rs []resource.Resource, namespace string) {
	fmt.Fprintln(w, "prepared transactions on the servers:")
	tw := newTable(w)
	fmt.Fprintln(tw, "  DATABASE\tSYSTEM\tTHREEPC\tOLDEST\tOTHER\tOLDEST OTHER")
	for _, r := range rs {
		ours, oldestOurs, others, oldestOther, err := preparedStats(ctx, r, resource.SpaceTag(namespace))
		if err != nil {
			fmt.Fprintf(tw, "  %s\t%s\terror: %s\n", r.Name(), r.System(), oneLine(err.Error()))
			continue
		}
		fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\t%d\t%s\n", r.Name(), r.System(), ours, ageStr(oldestOurs, ours), others, ageStr(oldestOther, others))
	}
	_ = tw.Flush()
}

func ageStr(d time.Duration, n int) string {
	switch {
	case n == 0:
		return "-"
	case d < 0:
		return "unknown"
	}
	return d.Round(time.Second).String()
}

// preparedStats counts prepared transactions: this namespace's threepc
// branches of the resource's database (by id) and everything else,
// through the driver's resource.ServerPreparedLister. PostgreSQL's are
// those of the resource's database; MySQL's XA RECOVER is server-wide
// (threepc's ids carry the database) and has no timestamps (others' age
// is -1).
func preparedStats(ctx context.Context, r resource.Resource, space string) (ours int, oldestOurs time.Duration, others int, oldestOther time.Duration, err error) {
	l, ok := r.(resource.ServerPreparedLister)
	if !ok {
		return 0, 0, 0, 0, fmt.Errorf("the %s driver (%T) cannot list the server's prepared transactions (it does not implement resource.ServerPreparedLister)", r.System(), r)
	}
	ps, err := l.ListServerPrepared(ctx)
	if err != nil {
		return 0, 0, 0, 0, err
	}
	now := time.Now()
	for _, p := range ps {
		if p.Database != "" && !p.SameDatabase {
			continue // another database, as the server says
		}
		if p.Ours && p.SameDatabase && p.XID.Space == space {
			ours++
			at := p.PreparedAt
			if at.IsZero() {
				at = p.XID.Time()
			}
			oldestOurs = max(oldestOurs, now.Sub(at))
			continue
		}
		others++
		if p.PreparedAt.IsZero() || oldestOther < 0 {
			oldestOther = -1
		} else {
			oldestOther = max(oldestOther, now.Sub(p.PreparedAt))
		}
	}
	return ours, oldestOurs, others, oldestOther, nil
}
