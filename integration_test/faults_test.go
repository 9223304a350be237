package integration_test

import (
	"context"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/threepc/threepc/drivers"
	"github.com/threepc/threepc/harness"
	"github.com/threepc/threepc/integration_test/internal/faultproxy"
	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

// bankManagers returns a 3PC and a 2PC manager over rs, with short
// timeouts so that a dead server costs seconds, not the defaults' half
// minute, and extra options (logging last resource, a namespace) added.
//
// The managers dawdle for a few milliseconds at the protocol's steps
// between prepare and commit, as a loaded coordinator would: without
// that, those windows are so short that faults land almost only in the
// work phase, where any database aborts cleanly on its own.
func bankManagers(t *testing.T, rs []resource.Resource, extra ...txmanager.Option) []*txmanager.Manager {
	t.Helper()
	slow := func(ctx context.Context, fp txmanager.Failpoint, gtid, res string) error {
		switch fp {
		case txmanager.AfterPrepare, txmanager.AfterDecide, txmanager.AfterPreCommit, txmanager.AfterCommit:
			time.Sleep(time.Duration(rand.IntN(15)) * time.Millisecond)
		}
		return nil
	}
	var ms []*txmanager.Manager
	for _, p := range []txmanager.Protocol{txmanager.ThreePC, txmanager.TwoPC} {
		opts := append([]txmanager.Option{txmanager.WithProtocol(p), txmanager.WithFailpoints(slow),
			txmanager.WithLastResource(false), txmanager.WithAsyncCleanup(false),
			txmanager.WithTimeout(3 * time.Second), txmanager.WithDecideTimeout(2 * time.Second),
			txmanager.WithCommitTimeout(3 * time.Second), txmanager.WithCleanupTimeout(time.Second),
			txmanager.WithLogger(quiet)}, extra...)
		m, err := txmanager.New(rs, opts...)
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, m)
	}
	return ms
}

// TestDatabaseCrashes runs the bank workload while the PostgreSQL and the
// MariaDB server are killed with SIGKILL and restarted in turn, on
// dedicated servers. Afterwards recovery leaves nothing in doubt, every
// transfer is in both ledgers or neither, and money is conserved.
func TestDatabaseCrashes(t *testing.T) {
	ctx := testCtx(t, 3*time.Minute)
	// Servers of its own, which it kills (Own skips when the environment
	// names external servers).
	srvs := []*harness.Server{harness.Own(t, harness.Postgres, harness.Options{}), harness.Own(t, harness.MariaDB, harness.Options{})}
	ps := []part{newPart(t, srvs[0], "dbc_pg", accountsDDL, ledgerDDL), newPart(t, srvs[1], "dbc_my", accountsDDL, ledgerDDL)}
	rs := openAll(t, ps)
	seedBank(t, rs)

	stop := make(chan struct{})
	w := runWorkload(t, bankManagers(t, openAll(t, ps)), "dbc_pg", "dbc_my", 6, stop)
	// Short outages are ridden out by the coordinators' retries; outages
	// longer than the commit and decide timeouts leave transactions
	// commit-pending and in doubt for recovery.
	rounds := []struct {
		victim *harness.Server
		outage time.Duration
	}{{srvs[0], 300 * time.Millisecond}, {srvs[1], 3500 * time.Millisecond}, {srvs[0], 3500 * time.Millisecond}}
	for round, r := range rounds {
		victim := r.victim
		time.Sleep(800 * time.Millisecond)
		w.mu.Lock()
		before := w.summary()
		w.mu.Unlock()
		if err := victim.Kill(); err != nil {
			close(stop)
			t.Fatalf("round %d: kill %s: %v", round+1, victim.Kind(), err)
		}
		time.Sleep(r.outage)
		t0 := time.Now()
		if err := victim.Restart(ctx); err != nil {
			close(stop)
			t.Fatalf("round %d: restart %s: %v", round+1, victim.Kind(), err)
		}
		t.Logf("round %d: killed %s for %v (restart took %v); outcomes before the kill: %s", round+1, victim.Kind(), r.outage, time.Since(t0).Round(time.Millisecond), before)
	}
	time.Sleep(800 * time.Millisecond)
	close(stop)
	w.wait(t)

	st := recoverFresh(t, rs, 60*time.Second)
	if len(st.badErrs) > 0 {
		t.Errorf("recovery errors: %v", st.badErrs)
	}
	t.Logf("recovery: %d scans, %d actions", st.scans, st.actions)
	checkBank(t, w, rs)
	if w.counts[outAborted]+w.counts[outInDoubt]+w.counts[outPending]+w.counts[outWorkFailed] == 0 {
		t.Errorf("no transfer saw a fault: the kills missed the workload")
	}
}

// TestConnectionFaults runs the bank workload through TCP proxies that
// reset every connection at random moments, mid-statement or between
// statements, in every phase of the protocol. Recovery then runs over
// direct connections; same end checks as TestDatabaseCrashes.
func TestConnectionFaults(t *testing.T) {
	pg := harness.Shared(t, harness.Postgres)
	my := harness.Shared(t, harness.MariaDB)
	ps := []part{newPart(t, pg, "net_pg", accountsDDL, ledgerDDL), newPart(t, my, "net_my", accountsDDL, ledgerDDL)}
	rs := openAll(t, ps)
	seedBank(t, rs)

	var proxies []*faultproxy.Proxy
	var coordRs []resource.Resource
	for _, p := range ps {
		px, err := faultproxy.New(p.srv.Addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { px.Close() })
		proxies = append(proxies, px)
		r, err := drivers.Open(p.name, strings.Replace(p.url(), p.srv.Addr(), px.Addr(), 1))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resource.Close(r) })
		coordRs = append(coordRs, r)
	}

	stop := make(chan struct{})
	w := runWorkload(t, bankManagers(t, coordRs), "net_pg", "net_my", 6, stop)
	cutterDone := make(chan int)
	go func() {
		rng := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
		sockets := 0
		for {
			select {
			case <-stop:
				cutterDone <- sockets
				return
			case <-time.After(time.Duration(20+rng.IntN(180)) * time.Millisecond):
			}
			if rng.IntN(3) == 0 {
				for _, px := range proxies {
					sockets += px.Cut()
				}
			} else {
				sockets += proxies[rng.IntN(len(proxies))].Cut()
			}
		}
	}()
	time.Sleep(4 * time.Second)
	close(stop)
	sockets := <-cutterDone
	w.wait(t)
	t.Logf("cuts: %d and %d, %d sockets reset", proxies[0].Cuts(), proxies[1].Cuts(), sockets)

	st := recoverFresh(t, rs, 30*time.Second)
	if len(st.badErrs) > 0 {
		t.Errorf("recovery errors: %v", st.badErrs)
	}
	t.Logf("recovery: %d scans, %d actions", st.scans, st.actions)
	checkBank(t, w, rs)
	if w.counts[outAborted]+w.counts[outInDoubt]+w.counts[outPending]+w.counts[outWorkFailed] == 0 {
		t.Errorf("no transfer saw a fault: the cuts missed the workload")
	}
}
