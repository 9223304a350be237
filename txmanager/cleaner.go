package txmanager

import (
	"context"
	"sync"
	"time"

	"github.com/threepc/threepc/tracing"
)

// cleaner deletes marker rows in the background, in batches per resource
// (WithAsyncCleanup). Deleting a committed transaction's rows late is as
// safe as a coordinator dying before its clean-up: recovery collects
// whatever is left.
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
	gtid     string
	markedAt []string
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
		batch := map[string][]string{}
		add := func(j cleanupJob) {
			for _, name := range j.markedAt {
				batch[name] = append(batch[name], j.gtid)
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

func (c *cleaner) flush(batch map[string][]string) {
	m := c.m
	ctx, cancel := context.WithTimeout(context.Background(), m.opts.cleanupTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for name, gtids := range batch {
		wg.Go(func() {
			octx, op := m.tel.Op(ctx, tracing.OpDeleteMarkers, m.res[name])
			err := m.res[name].DeleteMarkers(octx, gtids...)
			op.End(err)
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
