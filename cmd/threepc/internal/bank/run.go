package bank

import (
	"context"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// RunOptions bound a run: it stops at Duration or after Transfers
// transfers, whichever comes first (zero means no bound; one of them must
// be set), or when ctx is done.
type RunOptions struct {
	Workers   int
	Duration  time.Duration
	Transfers int64
	// Seed seeds the workers' random choices; 0 picks a random seed.
	Seed uint64
	// OnResult, if set, is called after every transfer (from the workers,
	// concurrently).
	OnResult func(Result)
}

// Stats summarise a run.
type Stats struct {
	Counts   [Failed + 1]int64 // by Outcome
	Timeouts int64             // aborts caused by the transaction timeout
	Elapsed  time.Duration
	// Latencies of committed transfers, sorted.
	Latencies []time.Duration
	// Phases of committed transfers whose phases were recorded, each
	// sorted, in PhaseNames order.
	Phases [][]time.Duration
	// FirstErrors holds up to five error messages seen, for the summary.
	FirstErrors []string
}

// Total is the number of transfers attempted.
func (s *Stats) Total() int64 {
	var n int64
	for _, c := range s.Counts {
		n += c
	}
	return n
}

// Throughput is committed transfers per second.
func (s *Stats) Throughput() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Counts[Committed]) / s.Elapsed.Seconds()
}

// Percentile returns the p-th percentile (0..100) of sorted durations.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p / 100)
	return sorted[i]
}

// Run runs transfers on opts.Workers workers until a bound is reached.
// Transfers in flight when the bound is reached finish normally; when ctx
// is cancelled they are cancelled too (aborting them cleanly, or leaving
// them to recovery past the commit point).
func (w *Workload) Run(ctx context.Context, opts RunOptions) *Stats {
	workers := max(opts.Workers, 1)
	seed := opts.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	var (
		issued   atomic.Int64
		mu       sync.Mutex
		st       = &Stats{}
		lats     []time.Duration
		phases   = make([][]time.Duration, len(PhaseNames))
		deadline time.Time
	)
	start := time.Now()
	if opts.Duration > 0 {
		deadline = start.Add(opts.Duration)
	}
	var wg sync.WaitGroup
	for i := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			var local []time.Duration
			for ctx.Err() == nil {
				if !deadline.IsZero() && !time.Now().Before(deadline) {
					break
				}
				if opts.Transfers > 0 && issued.Add(1) > opts.Transfers {
					break
				}
				res := w.Transfer(ctx, rng)
				if res.Outcome == Committed {
					local = append(local, res.Latency)
				}
				mu.Lock()
				st.Counts[res.Outcome]++
				if res.Timeout && res.Outcome == Aborted {
					st.Timeouts++
				}
				if res.Err != nil && len(st.FirstErrors) < 5 && ctx.Err() == nil {
					st.FirstErrors = append(st.FirstErrors, res.Outcome.String()+": "+res.Err.Error())
				}
				if res.HasPhase {
					for k, d := range res.Phases.Slice() {
						phases[k] = append(phases[k], d)
					}
				}
				mu.Unlock()
				if opts.OnResult != nil {
					opts.OnResult(res)
				}
			}
			mu.Lock()
			lats = append(lats, local...)
			mu.Unlock()
		})
	}
	wg.Wait()
	st.Elapsed = time.Since(start)
	slices.Sort(lats)
	st.Latencies = lats
	for k := range phases {
		slices.Sort(phases[k])
	}
	st.Phases = phases
	return st
}
