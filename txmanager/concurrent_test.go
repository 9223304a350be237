package txmanager_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/threepc/threepc/internal/memres"
	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

// barrierResource's Begin waits until every resource of the barrier is
// inside its Begin: it fails unless the branches begin concurrently.
type barrierResource struct {
	resource.Resource
	all     *sync.WaitGroup
	begins  *atomic.Int32
	timeout time.Duration
}

func (r barrierResource) Begin(ctx context.Context, xid resource.XID) (resource.Branch, error) {
	r.begins.Add(1)
	r.all.Done()
	done := make(chan struct{})
	go func() { r.all.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(r.timeout):
		return nil, errors.New("the other branches did not begin meanwhile: enlistment is serialized")
	}
	return r.Resource.Begin(ctx, xid)
}

// TestConcurrentHandles: handles of different resources used from
// several goroutines begin their branches concurrently, a second user of
// a branch being begun waits for it (one begin per resource), and the
// transaction commits everywhere.
func TestConcurrentHandles(t *testing.T) {
	names := []string{"db0", "db1", "db2"}
	world := memres.NewWorld(memres.NewClock(time.Now()), names...)
	var all sync.WaitGroup
	all.Add(len(names))
	begins := make([]atomic.Int32, len(names))
	var rs []resource.Resource
	for i, r := range world.NewProc("coord").Resources() {
		rs = append(rs, barrierResource{Resource: r, all: &all, begins: &begins[i], timeout: 10 * time.Second})
	}
	m, err := txmanager.New(rs, txmanager.WithLogger(quietLog))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close(context.Background())
	var gtid string
	err = m.Run(context.Background(), func(ctx context.Context, tx *txmanager.Tx) error {
		gtid = tx.GTID()
		var wg sync.WaitGroup
		errs := make([]error, 2*len(names))
		for i := range errs {
			name := names[i%len(names)]
			wg.Go(func() { _, errs[i] = tx.DB(name).ExecContext(ctx, "UPDATE") })
		}
		wg.Wait()
		return errors.Join(errs...)
	})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	for i := range begins {
		if n := begins[i].Load(); n != 1 {
			t.Errorf("%s: %d begins, want 1", names[i], n)
		}
	}
	if o := world.Outcome(gtid); o != memres.AllCommitted {
		t.Errorf("outcome %v, want all committed", o)
	}
}

// TestConcurrentHandleBeginFails: a branch that cannot begin while
// another goroutine's branch begins dooms the transaction: both others
// roll back, and the error names the resource.
func TestConcurrentHandleBeginFails(t *testing.T) {
	names := []string{"db0", "db1"}
	world := memres.NewWorld(memres.NewClock(time.Now()), names...)
	world.SetDown("db1", true)
	m, err := txmanager.New(world.NewProc("coord").Resources(), txmanager.WithLogger(quietLog))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close(context.Background())
	var gtid string
	err = m.Run(context.Background(), func(ctx context.Context, tx *txmanager.Tx) error {
		gtid = tx.GTID()
		var wg sync.WaitGroup
		for _, name := range names {
			wg.Go(func() { _, _ = tx.DB(name).ExecContext(ctx, "UPDATE") })
		}
		wg.Wait()
		return nil // the function ignores the failure: Commit must not
	})
	var ae *txmanager.AbortError
	if !errors.As(err, &ae) || ae.Resource != "db1" {
		t.Fatalf("Run: %v, want an AbortError naming db1", err)
	}
	if o := world.Outcome(gtid); o != memres.AllAborted && o != memres.Empty {
		t.Errorf("outcome %v, want nothing committed", o)
	}
	if err := world.CheckInvariants(); err != nil {
		t.Error(err)
	}
}
