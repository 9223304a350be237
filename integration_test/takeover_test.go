package integration_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/recovery"
	"github.com/threepc/threepc/txmanager"
)

// TestTakeOver measures how long a peer instance's background scanner
// takes to finish the transaction of a coordinator that died right after
// its decision: from the death to every branch committed. The bound is
// the in-flight horizon + 1 s: the scanner leaves the transaction alone
// while it is younger than the horizon (its coordinator may be alive),
// then one scan interval, then the commits.
func TestTakeOver(t *testing.T) {
	const (
		horizon  = 2 * time.Second
		interval = 100 * time.Millisecond
	)
	pg := harness.Shared(t, harness.Postgres)
	my := harness.Shared(t, harness.MariaDB)
	ps := []part{newPart(t, pg, "to_pg", crashTable), newPart(t, my, "to_my", crashTable)}

	// The peer instance: a scanner running in the background all along.
	peer := openAll(t, ps)
	sc, err := recovery.New(peer, recovery.WithHorizon(horizon), recovery.WithLogger(quiet), recovery.WithInstanceID("peer"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var mu sync.Mutex
	st := &scanStats{}
	wg.Go(func() {
		_ = sc.Run(ctx, interval, func(rep *recovery.Report) {
			mu.Lock()
			st.add(rep)
			mu.Unlock()
		})
	})
	defer func() { stop(); wg.Wait() }()

	watch := openAll(t, ps)
	for _, protocol := range []txmanager.Protocol{txmanager.TwoPC, txmanager.ThreePC} {
		t.Run(string(protocol), func(t *testing.T) {
			ctx := testCtx(t, time.Minute)
			key := "takeover-" + string(protocol)
			// The child's decision window (timeout 1 s + decide 0.5 s) is
			// inside the horizon, as PROTOCOL.md asks of a deployment.
			gtid, died := startChild(t, crashRun{parts: ps, protocol: protocol, fp: txmanager.AfterDecide, k: 1, key: key, timeout: time.Second}).crashed(t)
			for {
				done := countPrepared(prepared(t, ctx, watch), gtid) == 0
				for _, r := range watch {
					done = done && count(t, ctx, r, "SELECT COUNT(*) FROM crash_rows WHERE k = "+ph(r, 1), key) == 1
				}
				if done {
					break
				}
				if time.Since(died) > horizon+10*time.Second {
					t.Fatalf("the peer did not finish %s within %v of the crash", gtid, horizon+10*time.Second)
				}
				time.Sleep(10 * time.Millisecond)
			}
			took := time.Since(died)
			t.Logf("TAKE-OVER %s: branches of %s committed %v after the coordinator died (horizon %v, scan interval %v; the gtid was %v old at the crash)",
				protocol, gtid, took.Round(time.Millisecond), horizon, interval, died.Sub(gtidTime(gtid)).Round(time.Millisecond))
			if took > horizon+time.Second {
				t.Errorf("take-over took %v, more than horizon + 1 s = %v", took, horizon+time.Second)
			}
		})
	}
	// Stop the peer first: holding mu while waiting for it would deadlock
	// with a scan that ends meanwhile and waits for mu in its callback.
	stop()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(st.badErrs) > 0 {
		t.Errorf("peer scanner errors: %v", st.badErrs)
	}
	t.Logf("peer scanner: %d scans, %d actions, %d busy-branch answers", st.scans, st.actions, st.benignErrs)
	// Clean-up of markers is the peer's job too; give it the last word
	// and check.
	recoverFresh(t, watch, 10*time.Second)
	checkClean(t, testCtx(t, time.Minute), watch)
}
