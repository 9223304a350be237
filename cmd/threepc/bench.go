package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/threepc/threepc/cmd/threepc/internal/bank"
	"github.com/threepc/threepc/drivers/mysql"
	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

// benchCell is one measured (protocol, concurrency) pair.
type benchCell struct {
	Protocol     string  `json:"protocol"`
	Participants int     `json:"participants"`
	Concurrency  int     `json:"concurrency"`
	Seconds      float64 `json:"seconds"`
	Committed    int64   `json:"committed"`
	Aborted      int64   `json:"aborted"`
	// TimedOut counts the aborts caused by the transaction timeout (a
	// distributed deadlock, or a server too slow): included in Aborted.
	TimedOut      int64   `json:"aborted_by_timeout"`
	InDoubt       int64   `json:"in_doubt"`
	CommitPending int64   `json:"commit_pending"`
	Heuristic     int64   `json:"heuristic"`
	Failed        int64   `json:"failed"`
	TxPerSec      float64 `json:"tx_per_sec"`
	P50Ms         float64 `json:"p50_ms"`
	P99Ms         float64 `json:"p99_ms"`
	AllocsPerTx   float64 `json:"allocs_per_tx"`
	// StealPct is the share of the machine's CPU time the hypervisor
	// stole during the cell (Linux; the largest of the rounds): figures
	// measured under much steal are not comparable.
	StealPct *float64 `json:"cpu_steal_pct,omitempty"`
	// HeapBytes is the live heap after a GC at the end of the cell.
	HeapBytes  uint64  `json:"heap_bytes"`
	BytesPerTx float64 `json:"bytes_per_tx"`
	// Ratios to the local floor and to hand-written 2PC at the same
	// concurrency (throughput ratio; p50 ratio), when those were measured.
	TputVsLocal       *float64 `json:"tput_vs_local,omitempty"`
	P50VsLocal        *float64 `json:"p50_vs_local,omitempty"`
	TputVsHandwritten *float64 `json:"tput_vs_handwritten2pc,omitempty"`
	P50VsHandwritten  *float64 `json:"p50_vs_handwritten2pc,omitempty"`
}

type benchResult struct {
	Databases []string `json:"databases"`
	Duration  string   `json:"duration"`
	// ParallelLegs: each transfer's legs ran concurrently.
	ParallelLegs bool        `json:"parallel_legs"`
	Cells        []benchCell `json:"cells"`
	// Live heap after a GC before the first cell and after the last one:
	// a leak shows as growth over a long run.
	HeapStartBytes uint64 `json:"heap_start_bytes"`
	// HeapWarmBytes is the live heap after the first cell's warm-up: the
	// pools and caches are filled, the start figure of a leak check.
	HeapWarmBytes uint64 `json:"heap_warm_bytes"`
	HeapEndBytes  uint64 `json:"heap_end_bytes"`
}

// benchVariant is a protocol of the bench with options changed from the
// defaults: "3pc+nollr+ro" is the library's 3PC without logging last
// resource, with the MySQL read-only vote.
type benchVariant struct {
	name        string
	base        bank.Protocol
	opts        []txmanager.Option
	mysqlParams string // added to every mysql:// URL
}

// benchModifiers are the options a variant can change, in the order they
// are written.
var benchModifiers = []struct {
	name, help  string
	opt         txmanager.Option
	mysqlParams string
}{
	{name: "nollr", help: "no logging last resource: the primary is prepared and committed like the others, its decision row inserted apart", opt: txmanager.WithLastResource(false)},
	{name: "nobatch", help: "no batched decisions: every marker row is a statement of its own", opt: txmanager.WithBatching(false)},
	{name: "noasync", help: "synchronous marker clean-up: Commit returns once the rows are settled", opt: txmanager.WithAsyncCleanup(false)},
	{name: "ro", help: "read-only vote on MySQL/MariaDB (costs two status queries per branch)", mysqlParams: mysql.ParamReadOnlyVote + "=true"},
}

// removedModifiers are options that are gone, with what to write instead.
var removedModifiers = map[string]string{
	"noro":  "the MySQL read-only vote is off by default now; drop +noro (+ro turns the vote on)",
	"llr":   "logging last resource is on by default now; drop +llr (+nollr switches it off)",
	"async": "asynchronous clean-up is on by default now; drop +async (+noasync switches it off)",
}

func parseBenchVariant(s string) (benchVariant, error) {
	parts := strings.Split(s, "+")
	base, err := bank.ParseProtocol(parts[0])
	if err != nil {
		return benchVariant{}, err
	}
	v := benchVariant{name: s, base: base}
	if len(parts) > 1 && base != bank.TwoPC && base != bank.ThreePC {
		return benchVariant{}, fmt.Errorf("%q: options apply to 2pc and 3pc only", s)
	}
	var params []string
	for _, mod := range parts[1:] {
		found := false
		for _, m := range benchModifiers {
			if m.name != mod {
				continue
			}
			found = true
			if m.opt != nil {
				v.opts = append(v.opts, m.opt)
			}
			if m.mysqlParams != "" {
				params = append(params, m.mysqlParams)
			}
		}
		if why, ok := removedModifiers[mod]; ok && !found {
			return benchVariant{}, fmt.Errorf("%q: option %q was removed: %s", s, mod, why)
		}
		if !found {
			var known []string
			for _, m := range benchModifiers {
				known = append(known, m.name)
			}
			return benchVariant{}, fmt.Errorf("%q: unknown option %q (want %s)", s, mod, strings.Join(known, ", "))
		}
	}
	slices.Sort(params)
	v.mysqlParams = strings.Join(params, "&")
	return v, nil
}

// withMySQLParams adds params to every mysql:// (or mariadb://) URL of
// the NAME=URL specs.
func withMySQLParams(specs []string, params string) []string {
	if params == "" {
		return specs
	}
	out := make([]string, len(specs))
	for i, spec := range specs {
		out[i] = spec
		name, url, ok := strings.Cut(spec, "=")
		scheme, _, _ := strings.Cut(url, "://")
		if !ok || (!strings.EqualFold(scheme, "mysql") && !strings.EqualFold(scheme, "mariadb")) {
			continue
		}
		sep := "?"
		if strings.Contains(url, "?") {
			sep = "&"
		}
		out[i] = name + "=" + url + sep + params
	}
	return out
}

func newBenchCmd(g *globals) *cobra.Command {
	var (
		protocols    string
		concurrency  string
		duration     time.Duration
		warmup       time.Duration
		timeout      time.Duration
		asJSON       bool
		parts        string
		rounds       int
		parallelLegs bool
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure the transfer workload per protocol and concurrency: tx/s, p50, p99, ratios",
		Long: `bench runs the bank transfer workload (set it up first with threepc bank setup)
for every protocol and concurrency, on the same databases in one run:

  local           two independent local commits, no atomicity: the floor
  handwritten2pc  two-phase commit written by hand with database/sql
  2pc             the library in two-phase commit mode
  3pc             the library in three-phase commit mode

The library runs with its defaults (logging last resource, batched
decisions, asynchronous clean-up); +NAME suffixes change them per protocol,
e.g. 3pc+nollr+nobatch+noasync for the plain protocol:

  nollr     no logging last resource: the primary is prepared and
            committed like every branch, its decision row apart
  nobatch   no batched decisions: every decision and pre-commit row is a
            statement of its own
  noasync   synchronous marker clean-up: Commit returns once the marker
            rows are settled
  ro        read-only vote on MySQL/MariaDB: a branch that wrote nothing
            commits at the vote, at the cost of two status queries per
            branch (off by default)

--participants 2,3,5,8 runs transfers over that many databases (give at
least as many with --db; scripts/benchservers makes eight).

--parallel-legs runs a transfer's legs (its work, one UPDATE and ledger
row per database) concurrently, as application code can with branch
handles, in every protocol: the work then costs about one round trip
whatever the number of participants, as the protocol's own phases do.

--rounds 3 measures every cell three times, each round with the protocols
in another rotation of the order given, and reports per cell the median
throughput, p50, p99 and allocations, and the summed counts: cells run
one after another, and the tables and the servers' background work grow
during a run, so a fixed order favours the first protocol.

Every transfer writes the bank's ledger (see bank check), and bench prints
the aborted (by the transaction timeout) and in-doubt counts per cell.
It prints throughput, p50 and p99 latency, allocations per transfer
(runtime.MemStats mallocs over the cell / transfers), the CPU time the
hypervisor stole during the cell (Linux /proc/stat; with --rounds the
largest: cells measured under much steal are not comparable), the live heap before
the first and after the last cell, and the ratios to local and
handwritten2pc.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			var ps []benchVariant
			for _, s := range strings.Split(protocols, ",") {
				v, err := parseBenchVariant(strings.TrimSpace(s))
				if err != nil {
					return usageErrorf("--protocols: %v", err)
				}
				ps = append(ps, v)
			}
			var cs []int
			for _, s := range strings.Split(concurrency, ",") {
				c, err := strconv.Atoi(strings.TrimSpace(s))
				if err != nil || c < 1 || c > 64 {
					return usageErrorf("--concurrency: %q is not a number from 1 to 64", s)
				}
				cs = append(cs, c)
			}
			var ns []int
			for _, s := range strings.Split(parts, ",") {
				n, err := strconv.Atoi(strings.TrimSpace(s))
				if err != nil || n < 2 || n > len(g.dbs) {
					return usageErrorf("--participants: %q is not a number from 2 to %d (the databases given with --db)", s, len(g.dbs))
				}
				ns = append(ns, n)
			}
			if duration <= 0 {
				return usageErrorf("--duration must be positive")
			}
			if rounds < 1 || rounds > 9 {
				return usageErrorf("--rounds: %d is not a number from 1 to 9", rounds)
			}
			if warmup < 0 {
				warmup = min(duration/5, time.Second)
			}
			// One set of resources per distinct driver setting: the
			// variants that change how the MySQL driver runs its
			// branches get a pool of their own on the same databases.
			sets := map[string][]resource.Resource{}
			defer func() {
				for _, rs := range sets {
					closeResources(rs)
				}
			}()
			ws := map[string]*bank.Workload{}
			var rs []resource.Resource
			for _, p := range ps {
				set, ok := sets[p.mysqlParams]
				if !ok {
					var err error
					set, err = openResources(ctx, withMySQLParams(g.dbs, p.mysqlParams), openOpts{min: 2})
					if err != nil {
						return err
					}
					sizePools(set, maxInt(cs))
					sets[p.mysqlParams] = set
				}
				if rs == nil {
					rs = set
				}
				for _, n := range ns {
					w, err := bank.New(ctx, bank.Config{Resources: set, Protocol: p.base, Timeout: timeout, Options: p.opts, Namespace: g.namespace, Legs: n, ParallelLegs: parallelLegs})
					if err != nil {
						if errors.Is(err, bank.ErrNotSetUp) {
							return usageErrorf("%v", err)
						}
						return failedErrorf("%v", err)
					}
					ws[cellKey(p.name, n)] = w
				}
			}
			closed := false
			closeWorkloads := func() error {
				if closed {
					return nil
				}
				closed = true
				var errs []error
				for _, w := range ws {
					errs = append(errs, w.Close(context.WithoutCancel(ctx)))
				}
				return errors.Join(errs...)
			}
			defer closeWorkloads()
			res := benchResult{Databases: strings.Split(names(rs), ", "), Duration: duration.String(), ParallelLegs: parallelLegs}
			runtime.GC()
			var heap0 runtime.MemStats
			runtime.ReadMemStats(&heap0)
			res.HeapStartBytes = heap0.HeapAlloc
			var bar *progressbar.ProgressBar
			if stderrIsTTY {
				bar = progressbar.NewOptions(rounds*len(ns)*len(ps)*len(cs), progressbar.OptionSetWriter(os.Stderr),
					progressbar.OptionSetWidth(30), progressbar.OptionShowCount(), progressbar.OptionClearOnFinish())
			}
			var measured []benchCell
			for _, n := range ns {
				for _, c := range cs {
					for r := range rounds {
						for i := range ps {
							p := ps[(i+r)%len(ps)]
							if bar != nil {
								bar.Describe(fmt.Sprintf("%s n=%d c=%d", p.name, n, c))
							}
							w := ws[cellKey(p.name, n)]
							if warmup > 0 {
								w.Run(ctx, bank.RunOptions{Workers: c, Duration: warmup})
							}
							if len(measured) == 0 {
								runtime.GC()
								var mw runtime.MemStats
								runtime.ReadMemStats(&mw)
								res.HeapWarmBytes = mw.HeapAlloc
							}
							cell, ok := measureCell(ctx, w, c, duration)
							if !ok {
								return failedErrorf("interrupted")
							}
							cell.Protocol, cell.Participants = p.name, n
							measured = append(measured, cell)
							if bar != nil {
								_ = bar.Add(1)
							}
						}
					}
				}
			}
			if bar != nil {
				_ = bar.Finish()
			}
			for _, n := range ns {
				for _, c := range cs {
					for _, p := range ps {
						res.Cells = append(res.Cells, medianCell(measured, p.name, n, c))
					}
				}
			}
			if err := closeWorkloads(); err != nil {
				return failedErrorf("%v", err)
			}
			runtime.GC()
			var heap1 runtime.MemStats
			runtime.ReadMemStats(&heap1)
			res.HeapEndBytes = heap1.HeapAlloc
			addRatios(res.Cells)
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				if err := enc.Encode(res); err != nil {
					return err
				}
			} else {
				printBench(os.Stdout, res)
			}
			var heuristic int64
			for _, c := range res.Cells {
				heuristic += c.Heuristic
			}
			if heuristic > 0 {
				return heuristicErrorf("%s with a heuristic outcome (a branch contradicts the commit decision): run `threepc inspect` and do what it says", plural(int(heuristic), "transfer"))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&protocols, "protocols", "local,handwritten2pc,2pc,3pc", "comma-separated: local, handwritten2pc, 2pc, 3pc, with +nollr, +nobatch, +noasync, +ro options on 2pc and 3pc")
	cmd.Flags().StringVar(&concurrency, "concurrency", "1,16,64", "comma-separated numbers of concurrent transfers")
	cmd.Flags().IntVar(&rounds, "rounds", 1, "measure every cell this many times, rotating the protocols' order, and report medians")
	cmd.Flags().DurationVar(&duration, "duration", 5*time.Second, "measured time per cell")
	cmd.Flags().DurationVar(&warmup, "warmup", -1, "unmeasured time before each cell")
	cmd.Flags().Lookup("warmup").DefValue = "duration/5, at most 1s" // for --help, instead of the sentinel -1ns
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Second, "transaction timeout")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print machine-readable results")
	cmd.Flags().BoolVar(&parallelLegs, "parallel-legs", false, "run each transfer's legs concurrently, one goroutine per database (default: one after another)")
	cmd.Flags().StringVar(&parts, "participants", "2", "comma-separated numbers of databases one transfer touches (at most the databases given)")
	return cmd
}

func cellKey(protocol string, participants int) string {
	return fmt.Sprintf("%s/%d", protocol, participants)
}

// measureCell runs one cell: c workers for d. It reports false when ctx
// ended meanwhile.
func measureCell(ctx context.Context, w *bank.Workload, c int, d time.Duration) (benchCell, bool) {
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	cpu0, ok0 := readCPUTimes()
	st := w.Run(ctx, bank.RunOptions{Workers: c, Duration: d})
	cpu1, ok1 := readCPUTimes()
	runtime.ReadMemStats(&m1)
	if ctx.Err() != nil {
		return benchCell{}, false
	}
	runtime.GC()
	var mh runtime.MemStats
	runtime.ReadMemStats(&mh)
	n := float64(max(st.Total(), 1))
	return benchCell{
		Concurrency: c, Seconds: st.Elapsed.Seconds(),
		Committed: st.Counts[bank.Committed], Aborted: st.Counts[bank.Aborted], TimedOut: st.Timeouts,
		InDoubt: st.Counts[bank.InDoubt], CommitPending: st.Counts[bank.CommitPending],
		Heuristic: st.Counts[bank.Heuristic], Failed: st.Counts[bank.Failed],
		TxPerSec: st.Throughput(),
		P50Ms:    ms(bank.Percentile(st.Latencies, 50)), P99Ms: ms(bank.Percentile(st.Latencies, 99)),
		AllocsPerTx: float64(m1.Mallocs-m0.Mallocs) / n, BytesPerTx: float64(m1.TotalAlloc-m0.TotalAlloc) / n,
		HeapBytes: mh.HeapAlloc, StealPct: stealPercent(cpu0, cpu1, ok0 && ok1),
	}, true
}

// medianCell merges the rounds of one cell: the median of each rate and
// latency, the sum of each count.
func medianCell(cells []benchCell, protocol string, n, c int) benchCell {
	var rs []benchCell
	for _, x := range cells {
		if x.Protocol == protocol && x.Participants == n && x.Concurrency == c {
			rs = append(rs, x)
		}
	}
	median := func(f func(benchCell) float64) float64 {
		v := make([]float64, len(rs))
		for i, x := range rs {
			v[i] = f(x)
		}
		slices.Sort(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	out := benchCell{Protocol: protocol, Participants: n, Concurrency: c}
	for _, x := range rs {
		out.Seconds += x.Seconds
		out.Committed += x.Committed
		out.Aborted += x.Aborted
		out.TimedOut += x.TimedOut
		out.InDoubt += x.InDoubt
		out.CommitPending += x.CommitPending
		out.Heuristic += x.Heuristic
		out.Failed += x.Failed
		out.HeapBytes = x.HeapBytes // the last round's
		if x.StealPct != nil && (out.StealPct == nil || *x.StealPct > *out.StealPct) {
			out.StealPct = x.StealPct
		}
	}
	out.TxPerSec = median(func(x benchCell) float64 { return x.TxPerSec })
	out.P50Ms = median(func(x benchCell) float64 { return x.P50Ms })
	out.P99Ms = median(func(x benchCell) float64 { return x.P99Ms })
	out.AllocsPerTx = median(func(x benchCell) float64 { return x.AllocsPerTx })
	out.BytesPerTx = median(func(x benchCell) float64 { return x.BytesPerTx })
	return out
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func maxInt(xs []int) int {
	m := 0
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}

func addRatios(cells []benchCell) {
	base := func(p string, n, c int) *benchCell {
		for i := range cells {
			if cells[i].Protocol == p && cells[i].Participants == n && cells[i].Concurrency == c {
				return &cells[i]
			}
		}
		return nil
	}
	ratio := func(a, b float64) *float64 {
		if b == 0 {
			return nil
		}
		r := a / b
		return &r
	}
	for i := range cells {
		c := &cells[i]
		if l := base(string(bank.Local), c.Participants, c.Concurrency); l != nil {
			c.TputVsLocal, c.P50VsLocal = ratio(c.TxPerSec, l.TxPerSec), ratio(c.P50Ms, l.P50Ms)
		}
		if h := base(string(bank.Handwritten), c.Participants, c.Concurrency); h != nil {
			c.TputVsHandwritten, c.P50VsHandwritten = ratio(c.TxPerSec, h.TxPerSec), ratio(c.P50Ms, h.P50Ms)
		}
	}
}

func printBench(w io.Writer, res benchResult) {
	legs := "one after another"
	if res.ParallelLegs {
		legs = "concurrently"
	}
	fmt.Fprintf(w, "bench: %s per cell on %s; legs %s\n", res.Duration, strings.Join(res.Databases, ", "), legs)
	tw := newTable(w)
	fmt.Fprintln(tw, "PROTOCOL\tN\tCONC\tTX/S\tP50\tP99\tALLOCS/TX\tHEAP\tTPUT/LOCAL\tP50/LOCAL\tTPUT/HW2PC\tP50/HW2PC\tABORTED (TIMEOUT)\tIN DOUBT\tHEURISTIC\tCPU STEAL")
	for _, c := range res.Cells {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.1f\t%.2fms\t%.2fms\t%.0f\t%.1fMiB\t%s\t%s\t%s\t%s\t%d (%d)\t%d\t%d\t%s\n", c.Protocol, c.Participants, c.Concurrency, c.TxPerSec,
			c.P50Ms, c.P99Ms, c.AllocsPerTx, float64(c.HeapBytes)/(1<<20), fmtRatio(c.TputVsLocal), fmtRatio(c.P50VsLocal),
			fmtRatio(c.TputVsHandwritten), fmtRatio(c.P50VsHandwritten), c.Aborted, c.TimedOut, c.InDoubt+c.CommitPending, c.Heuristic, fmtPercent(c.StealPct))
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "heap after GC: %.1f MiB before the first cell, %.1f MiB after its warm-up, %.1f MiB after the last cell\n",
		float64(res.HeapStartBytes)/(1<<20), float64(res.HeapWarmBytes)/(1<<20), float64(res.HeapEndBytes)/(1<<20))
}

func fmtPercent(p *float64) string {
	if p == nil {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", *p)
}

func fmtRatio(r *float64) string {
	if r == nil {
		return "-"
	}
	return fmt.Sprintf("%.2fx", *r)
}
