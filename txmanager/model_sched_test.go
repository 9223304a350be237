package txmanager_test

import "runtime"

// baton runs the coordinator (on the test's goroutine) and interleaved
// recovery scans (each on its own goroutine) one at a time: whoever holds
// the baton runs, and at each of its steps (before every database
// operation, and at the coordinator's failpoints) it may hand the baton
// to another. Exactly one goroutine runs at any time, so the chooser is
// used in a fixed order and every scenario replays from its choices.
type baton struct {
	c        chooser
	coord    *actor
	live     []*actor // interleaved scans that have not ended
	coordOut bool     // the coordinator has returned: it only drains the scans
	abort    chan struct{}
	aborted  bool
	panicked any // a scan's panic (a rapid draw past its data), re-raised on the test's goroutine
}

type actor struct {
	name   string
	wake   chan struct{}
	budget int // steps left before it hands the baton on
	burst  int // the longest budget it is given
}

func newBaton(c chooser) *baton {
	return &baton{c: c, coord: &actor{name: "coord", wake: make(chan struct{}), burst: 40}, abort: make(chan struct{})}
}

// close ends every parked scan's goroutine (the scenario is over, or
// failed).
func (b *baton) close() {
	if !b.aborted {
		b.aborted = true
		close(b.abort)
	}
}

// park blocks me until it is handed the baton.
func (b *baton) park(me *actor) {
	select {
	case <-me.wake:
	case <-b.abort:
		if me == b.coord {
			panic("model: baton closed under the coordinator")
		}
		runtime.Goexit()
	}
	if me == b.coord && b.panicked != nil {
		p := b.panicked
		b.panicked = nil
		b.close()
		panic(p)
	}
}

// handTo gives the baton to another actor and waits until it comes back.
func (b *baton) handTo(me, to *actor) {
	to.wake <- struct{}{}
	b.park(me)
}

// others are the actors me may hand the baton to.
func (b *baton) others(me *actor) []*actor {
	var out []*actor
	if me != b.coord && !b.coordOut {
		out = append(out, b.coord)
	}
	for _, a := range b.live {
		if a != me {
			out = append(out, a)
		}
	}
	return out
}

// step is a point where me may hand the baton on: once its budget of
// steps is spent, to a drawn actor, which gets a drawn budget (a burst of
// 1 to its burst steps: long runs of one actor are as likely as short
// ones).
func (b *baton) step(me *actor, label string) {
	cands := b.others(me)
	if len(cands) == 0 {
		return
	}
	if me.budget--; me.budget > 0 {
		return
	}
	to := cands[b.c.Int(label+" to", 0, len(cands)-1)]
	to.budget = b.c.Int(label+" burst", 1, to.burst)
	b.handTo(me, to)
}

// spawn starts an interleaved actor, parked, and returns it; the caller
// (the coordinator) hands it the baton. run is its whole life; when it
// returns, the baton goes back to the coordinator.
func (b *baton) spawn(name string, run func(me *actor)) *actor {
	a := &actor{name: name, wake: make(chan struct{}), burst: 8}
	a.budget = b.c.Int(name+" burst", 1, a.burst)
	b.live = append(b.live, a)
	go func() {
		defer func() {
			r := recover()
			if b.aborted {
				return
			}
			if r != nil {
				b.panicked = r // as it is: rapid tells its own panics by type
			}
			for i, x := range b.live {
				if x == a {
					b.live = append(b.live[:i], b.live[i+1:]...)
					break
				}
			}
			b.coord.wake <- struct{}{}
		}()
		b.park(a)
		run(a)
	}()
	return a
}

// drain runs the interleaved scans to their end once the coordinator has
// returned.
func (b *baton) drain() {
	b.coordOut = true
	for len(b.live) > 0 {
		b.handTo(b.coord, b.live[0])
	}
}
