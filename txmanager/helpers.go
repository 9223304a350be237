package txmanager

import (
	"context"
	"slices"
	"time"

	"github.com/threepc/threepc/internal/fanout"
)

// fanout runs f for every branch, in parallel unless the manager is
// sequential, and returns the errors by index.
func (m *Manager) fanout(branches []*branch, f func(b *branch) error) []error {
	errs := make([]error, len(branches))
	m.each(len(branches), func(i int) { errs[i] = f(branches[i]) })
	return errs
}

// each runs f(0..n-1), in parallel unless sequential (deterministic tests).
func (m *Manager) each(n int, f func(i int)) { fanout.Each(n, m.opts.sequential, f) }

func firstError(errs []error) (int, error) {
	for i, err := range errs {
		if err != nil {
			return i, err
		}
	}
	return -1, nil
}

func participantNames(branches []*branch) []string {
	names := make([]string, len(branches))
	for i, b := range branches {
		names[i] = b.xid.Branch
	}
	slices.Sort(names)
	return names
}

func backoff(attempt int) time.Duration {
	d := 10 * time.Millisecond << min(attempt, 6)
	return min(d, time.Second)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
