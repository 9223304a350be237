package fanout

import (
	"sync/atomic"
	"testing"
)

func TestEach(t *testing.T) {
	for _, seq := range []bool{false, true} {
		for n := range 4 + 1 {
			var calls [4]atomic.Int32
			if n > len(calls) {
				break
			}
			Each(n, seq, func(i int) { calls[i].Add(1) })
			for i := range calls {
				want := int32(0)
				if i < n {
					want = 1
				}
				if got := calls[i].Load(); got != want {
					t.Errorf("n=%d sequential=%v: f(%d) called %d times, want %d", n, seq, i, got, want)
				}
			}
		}
	}
}
