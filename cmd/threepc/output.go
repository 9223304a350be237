package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/threepc/threepc/cmd/threepc/internal/bank"
)

// stderrIsTTY decides whether progress bars and spinners are drawn; in
// logs and tests they would only be noise.
var stderrIsTTY = term.IsTerminal(int(os.Stderr.Fd()))

// stdoutIsTTY decides whether recover --wait updates its scan line in
// place (a terminal) or prints one line per scan (a log, a pipe).
var stdoutIsTTY = term.IsTerminal(int(os.Stdout.Fd()))

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
}

// runProgress draws a progress bar for a workload run (to stderr, on a
// terminal) and returns the OnResult hook and a stop function.
func runProgress(ctx context.Context, what string, d time.Duration, transfers int64) (func(bank.Result), func()) {
	var committed, aborted, other atomic.Int64
	onResult := func(r bank.Result) {
		switch r.Outcome {
		case bank.Committed:
			committed.Add(1)
		case bank.Aborted:
			aborted.Add(1)
		default:
			other.Add(1)
		}
	}
	if !stderrIsTTY {
		return onResult, func() {}
	}
	max := transfers
	if d > 0 {
		max = d.Milliseconds()
	}
	bar := progressbar.NewOptions64(max,
		progressbar.OptionSetWriter(os.Stderr),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionSetPredictTime(false),
		progressbar.OptionShowElapsedTimeOnFinish(),
	)
	start := time.Now()
	return onResult, animate(ctx, bar, func() {
		c, a, o := committed.Load(), aborted.Load(), other.Load()
		bar.Describe(fmt.Sprintf("%s: %d committed, %d aborted, %d other", what, c, a, o))
		if d > 0 {
			_ = bar.Set64(min(time.Since(start).Milliseconds(), max))
		} else {
			_ = bar.Set64(min(c+a+o, max))
		}
	})
}

// animate calls tick every 100ms until the returned stop is called (or ctx
// ends), then finishes and clears bar.
func animate(ctx context.Context, bar *progressbar.ProgressBar, tick func()) (stop func()) {
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				tick()
			}
		}
	}()
	return func() {
		close(done)
		<-stopped
		_ = bar.Finish()
		_ = bar.Clear()
		fmt.Fprint(os.Stderr, "\r\033[K")
	}
}

// step prints what the demo is doing, with a spinner on a terminal, and
// how long it took.
func step(w io.Writer, what string, f func() error) error {
	t0 := time.Now()
	var stop func()
	if stderrIsTTY {
		sp := progressbar.NewOptions64(-1,
			progressbar.OptionSetWriter(os.Stderr),
			progressbar.OptionSetDescription(what),
			progressbar.OptionSpinnerType(14),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionClearOnFinish(),
		)
		stop = animate(context.Background(), sp, func() { _ = sp.Add(1) })
	} else {
		stop = func() {}
	}
	err := f()
	stop()
	status := "done"
	if err != nil {
		status = "FAILED"
	}
	fmt.Fprintf(w, "==> %s ... %s (%v)\n", what, status, time.Since(t0).Round(time.Millisecond))
	return err
}

// printStats prints the summary of a workload run.
func printStats(w io.Writer, st *bank.Stats, protocol bank.Protocol, workers int) {
	tw := newTable(w)
	fmt.Fprintf(tw, "transfers\t%d\t(%s, %d workers, %v)\n", st.Total(), protocol, workers, st.Elapsed.Round(time.Millisecond))
	fmt.Fprintf(tw, "committed\t%d\t\n", st.Counts[bank.Committed])
	fmt.Fprintf(tw, "aborted\t%d\t(%d by the transaction timeout)\n", st.Counts[bank.Aborted], st.Timeouts)
	fmt.Fprintf(tw, "in doubt\t%d\t(recovery finishes them)\n", st.Counts[bank.InDoubt])
	fmt.Fprintf(tw, "commit pending\t%d\t(decided commit; recovery completes them)\n", st.Counts[bank.CommitPending])
	if n := st.Counts[bank.Heuristic]; n > 0 {
		fmt.Fprintf(tw, "HEURISTIC\t%d\t(a branch contradicts the commit decision: run threepc inspect)\n", n)
	}
	if n := st.Counts[bank.Failed]; n > 0 {
		fmt.Fprintf(tw, "failed\t%d\t\n", n)
	}
	fmt.Fprintf(tw, "throughput\t%.1f tx/s\t\n", st.Throughput())
	fmt.Fprintf(tw, "latency\tp50 %v\tp99 %v\n", fmtDur(bank.Percentile(st.Latencies, 50)), fmtDur(bank.Percentile(st.Latencies, 99)))
	_ = tw.Flush()
	printPhases(w, st)
	for _, e := range st.FirstErrors {
		fmt.Fprintf(w, "  error: %s\n", oneLine(e))
	}
}

// printPhases prints per-phase latencies of committed transactions.
func printPhases(w io.Writer, st *bank.Stats) {
	if len(st.Phases) == 0 || len(st.Phases[0]) == 0 {
		return
	}
	fmt.Fprintf(w, "\nphase latencies of %d committed transactions:\n", len(st.Phases[0]))
	tw := newTable(w)
	fmt.Fprintln(tw, "  PHASE\tP50\tP99\tMEAN")
	for i, name := range bank.PhaseNames {
		ds := st.Phases[i]
		var sum time.Duration
		for _, d := range ds {
			sum += d
		}
		fmt.Fprintf(tw, "  %s\t%v\t%v\t%v\n", name, fmtDur(bank.Percentile(ds, 50)), fmtDur(bank.Percentile(ds, 99)), fmtDur(sum/time.Duration(max(len(ds), 1))))
	}
	_ = tw.Flush()
}

// fmtDur rounds a latency for humans.
func fmtDur(d time.Duration) string {
	switch {
	case d == 0:
		return "0"
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Second:
		return d.Round(10 * time.Microsecond).String()
	}
	return d.Round(time.Millisecond).String()
}

func plural(n int, word string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, word)
	}
	if strings.HasSuffix(word, "ch") || strings.HasSuffix(word, "s") {
		return fmt.Sprintf("%d %ses", n, word)
	}
	return fmt.Sprintf("%d %ss", n, word)
}

// quietLogger is for dry-run scanners, whose per-transaction warnings
// would repeat the table the command prints.
func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
}
