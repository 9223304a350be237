package txmanager

import (
	"context"
	"slices"
	"sync"
	"time"
)

// cleaner settles marker rows in the background, in batches per resource
// (WithAsyncCleanup): first the primaries' decision rows become
// tombstones, then the other participants' rows are deleted. Settling a
// committed transaction's rows late is as safe as a coordinator dying
// before its clean-up: recovery settles whatever is left.
type cleaner struct {
	m     *Manager
	queue chan cleanupJob
	done  chan struct{}
	pause bool // tests: never start the loop, leave everything to recovery

	mu      sync.Mutex
	started bool
	closed  bool
}

type cleanupJob struct {
	gtid    string
	primary string
	others  []string // participants but the primary
}

const (
	cleanerQueue = 4096
	cleanerBatch = 256
	cleanerDelay = 10 * time.Millisecond
)

func newCleaner(m *Manager) *cleaner {
	return &cleaner{m: m, queue: make(chan cleanupJob, cleanerQueue), done: make(chan struct{})}
}

// enqueue hands a committed transaction's rows to the background loop. It
// reports false when the queue is full or closed, and the caller cleans
// up itself: back-pressure rather than unbounded memory.
func (c *cleaner) enqueue(j cleanupJob) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	if !c.started && !c.pause {
		c.started = true
		go c.loop()
	}
	select {
	case c.queue <- j:
		return true
	default:
		return false
	}
}

func (c *cleaner) loop() {
	defer close(c.done)
	for j := range c.queue {
		batch := cleanupBatch{primaries: map[string][]string{}, others: map[string][]string{}}
		add := func(j cleanupJob) {
			batch.primaries[j.primary] = append(batch.primaries[j.primary], j.gtid)
			for _, name := range j.others {
				batch.others[name] = append(batch.others[name], j.gtid)
			}
		}
		add(j)
		timer := time.NewTimer(cleanerDelay)
	collect:
		for n := 1; n < cleanerBatch; n++ {
			select {
			case j, ok := <-c.queue:
				if !ok {
					break collect
				}
				add(j)
			case <-timer.C:
				break collect
			}
		}
		timer.Stop()
		c.flush(batch)
	}
}

// cleanupBatch is the gtids to settle, by resource.
type cleanupBatch struct {
	primaries map[string][]string // decision rows to turn into tombstones
	others    map[string][]string // rows to delete
}

func (c *cleaner) flush(batch cleanupBatch) {
	m := c.m
	ctx, cancel := context.WithTimeout(context.Background(), m.opts.cleanupTimeout)
	defer cancel()
	// A gtid's other rows go only once its decision row is a tombstone.
	settled := map[string]bool{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for name, gtids := range batch.primaries {
		wg.Go(func() {
			err := m.settlePrimary(ctx, name, gtids...)
			if err != nil {
				m.opts.logger.Info("threepc: marker clean-up deferred to recovery", "resource", name, "transactions", len(gtids), "err", err)
				return
			}
			mu.Lock()
			for _, g := range gtids {
				settled[g] = true
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	for name, gtids := range batch.others {
		gtids = slices.DeleteFunc(gtids, func(g string) bool { return !settled[g] })
		if len(gtids) == 0 {
			continue
		}
		wg.Go(func() {
			err := m.res[name].DeleteMarkers(ctx, gtids...)
			if err != nil {
				m.opts.logger.Info("threepc: marker clean-up deferred to recovery", "resource", name, "transactions", len(gtids), "err", err)
			}
		})
	}
	wg.Wait()
}

// close stops the loop after it has deleted what is queued, or when ctx
// ends (what is left goes to recovery).
func (c *cleaner) close(ctx context.Context) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	close(c.queue)
	started := c.started
	c.mu.Unlock()
	if !started {
		return nil
	}
	select {
	case <-c.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
