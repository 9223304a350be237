package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/threepc/threepc/cmd/threepc/internal/bank"
)

// benchCell is one measured (protocol, concurrency) pair.
type benchCell struct {
	Protocol      string  `json:"protocol"`
	Concurrency   int     `json:"concurrency"`
	Seconds       float64 `json:"seconds"`
	Committed     int64   `json:"committed"`
	Aborted       int64   `json:"aborted"`
	InDoubt       int64   `json:"in_doubt"`
	CommitPending int64   `json:"commit_pending"`
	Failed        int64   `json:"failed"`
	TxPerSec      float64 `json:"tx_per_sec"`
	P50Ms         float64 `json:"p50_ms"`
	P99Ms         float64 `json:"p99_ms"`
	AllocsPerTx   float64 `json:"allocs_per_tx"`
	BytesPerTx    float64 `json:"bytes_per_tx"`
	// Ratios to the local floor and to hand-written 2PC at the same
	// concurrency (throughput ratio; p50 ratio), when those were measured.
	TputVsLocal       *float64 `json:"tput_vs_local,omitempty"`
	P50VsLocal        *float64 `json:"p50_vs_local,omitempty"`
	TputVsHandwritten *float64 `json:"tput_vs_handwritten2pc,omitempty"`
	P50VsHandwritten  *float64 `json:"p50_vs_handwritten2pc,omitempty"`
}

type benchResult struct {
	Databases []string    `json:"databases"`
	Duration  string      `json:"duration"`
	Cells     []benchCell `json:"cells"`
}

func newBenchCmd(g *globals) *cobra.Command {
	var (
		protocols   string
		concurrency string
		duration    time.Duration
		warmup      time.Duration
		timeout     time.Duration
		asJSON      bool
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

and prints throughput, p50 and p99 latency, allocations per transfer and
the ratios to local and handwritten2pc.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			var ps []bank.Protocol
			for _, s := range strings.Split(protocols, ",") {
				p, err := bank.ParseProtocol(strings.TrimSpace(s))
				if err != nil {
					return usageErrorf("--protocols: %v", err)
				}
				ps = append(ps, p)
			}
			var cs []int
			for _, s := range strings.Split(concurrency, ",") {
				c, err := strconv.Atoi(strings.TrimSpace(s))
				if err != nil || c < 1 || c > 64 {
					return usageErrorf("--concurrency: %q is not a number from 1 to 64", s)
				}
				cs = append(cs, c)
			}
			if duration <= 0 {
				return usageErrorf("--duration must be positive")
			}
			if warmup < 0 {
				warmup = min(duration/5, time.Second)
			}
			rs, err := openResources(ctx, g.dbs, openOpts{min: 2})
			if err != nil {
				return err
			}
			defer closeResources(rs)
			sizePools(rs, maxInt(cs))
			ws := map[bank.Protocol]*bank.Workload{}
			for _, p := range ps {
				w, err := bank.New(ctx, bank.Config{Resources: rs, Protocol: p, Timeout: timeout})
				if err != nil {
					if errors.Is(err, bank.ErrNotSetUp) {
						return usageErrorf("%v", err)
					}
					return failedErrorf("%v", err)
				}
				ws[p] = w
			}
			res := benchResult{Databases: strings.Split(names(rs), ", "), Duration: duration.String()}
			var bar *progressbar.ProgressBar
			if stderrIsTTY {
				bar = progressbar.NewOptions(len(ps)*len(cs), progressbar.OptionSetWriter(os.Stderr),
					progressbar.OptionSetWidth(30), progressbar.OptionShowCount(), progressbar.OptionClearOnFinish())
			}
			for _, c := range cs {
				for _, p := range ps {
					if bar != nil {
						bar.Describe(fmt.Sprintf("%s c=%d", p, c))
					}
					if warmup > 0 {
						ws[p].Run(ctx, bank.RunOptions{Workers: c, Duration: warmup})
					}
					var m0, m1 runtime.MemStats
					runtime.ReadMemStats(&m0)
					st := ws[p].Run(ctx, bank.RunOptions{Workers: c, Duration: duration})
					runtime.ReadMemStats(&m1)
					if ctx.Err() != nil {
						return failedErrorf("interrupted")
					}
					n := float64(max(st.Total(), 1))
					res.Cells = append(res.Cells, benchCell{
						Protocol: string(p), Concurrency: c, Seconds: st.Elapsed.Seconds(),
						Committed: st.Counts[bank.Committed], Aborted: st.Counts[bank.Aborted],
						InDoubt: st.Counts[bank.InDoubt], CommitPending: st.Counts[bank.CommitPending], Failed: st.Counts[bank.Failed],
						TxPerSec: st.Throughput(),
						P50Ms:    ms(bank.Percentile(st.Latencies, 50)), P99Ms: ms(bank.Percentile(st.Latencies, 99)),
						AllocsPerTx: float64(m1.Mallocs-m0.Mallocs) / n, BytesPerTx: float64(m1.TotalAlloc-m0.TotalAlloc) / n,
					})
					if bar != nil {
						_ = bar.Add(1)
					}
				}
			}
			if bar != nil {
				_ = bar.Finish()
			}
			addRatios(res.Cells)
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(res)
			}
			printBench(os.Stdout, res)
			return nil
		},
	}
	cmd.Flags().StringVar(&protocols, "protocols", "local,handwritten2pc,2pc,3pc", "comma-separated: local, handwritten2pc, 2pc, 3pc")
	cmd.Flags().StringVar(&concurrency, "concurrency", "1,16,64", "comma-separated numbers of concurrent transfers")
	cmd.Flags().DurationVar(&duration, "duration", 5*time.Second, "measured time per cell")
	cmd.Flags().DurationVar(&warmup, "warmup", -1, "unmeasured time before each cell (default: duration/5, at most 1s)")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Second, "transaction timeout")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print machine-readable results")
	return cmd
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
	base := func(p string, c int) *benchCell {
		for i := range cells {
			if cells[i].Protocol == p && cells[i].Concurrency == c {
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
		if l := base(string(bank.Local), c.Concurrency); l != nil {
			c.TputVsLocal, c.P50VsLocal = ratio(c.TxPerSec, l.TxPerSec), ratio(c.P50Ms, l.P50Ms)
		}
		if h := base(string(bank.Handwritten), c.Concurrency); h != nil {
			c.TputVsHandwritten, c.P50VsHandwritten = ratio(c.TxPerSec, h.TxPerSec), ratio(c.P50Ms, h.P50Ms)
		}
	}
}

func printBench(w io.Writer, res benchResult) {
	fmt.Fprintf(w, "bench: %s per cell on %s\n", res.Duration, strings.Join(res.Databases, ", "))
	tw := newTable(w)
	fmt.Fprintln(tw, "PROTOCOL\tCONC\tTX/S\tP50\tP99\tALLOCS/TX\tTPUT/LOCAL\tP50/LOCAL\tTPUT/HW2PC\tP50/HW2PC\tABORTED\tIN DOUBT")
	for _, c := range res.Cells {
		fmt.Fprintf(tw, "%s\t%d\t%.1f\t%.2fms\t%.2fms\t%.0f\t%s\t%s\t%s\t%s\t%d\t%d\n", c.Protocol, c.Concurrency, c.TxPerSec,
			c.P50Ms, c.P99Ms, c.AllocsPerTx, fmtRatio(c.TputVsLocal), fmtRatio(c.P50VsLocal),
			fmtRatio(c.TputVsHandwritten), fmtRatio(c.P50VsHandwritten), c.Aborted, c.InDoubt+c.CommitPending)
	}
	_ = tw.Flush()
}

func fmtRatio(r *float64) string {
	if r == nil {
		return "-"
	}
	return fmt.Sprintf("%.2fx", *r)
}
