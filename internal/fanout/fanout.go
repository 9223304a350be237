// Package fanout runs one call per participant, in parallel or, for
// deterministic tests, one after the other.
package fanout

import "sync"

// Each runs f(0), ..., f(n-1): in parallel, or in order when sequential
// is set (or n is 1), and returns when all have returned.
func Each(n int, sequential bool, f func(i int)) {
	if sequential || n <= 1 {
		for i := range n {
			f(i)
		}
		return
	}
	// The last call runs on the caller's goroutine: one goroutine (and
	// its closure) fewer per fan-out.
	var wg sync.WaitGroup
	for i := range n - 1 {
		wg.Go(func() { f(i) })
	}
	f(n - 1)
	wg.Wait()
}
