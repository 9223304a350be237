package integration_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/threepc/threepc/drivers"
	"github.com/threepc/threepc/drivers/mysql"
	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

// The child coordinator is this test binary, re-executed with these
// variables set; TestHelperCoordinator does nothing without them.
const (
	envChild     = "THREEPC_IT_CHILD"     // "1" in the child
	envDBs       = "THREEPC_IT_DBS"       // NAME=URL|NAME=URL..., in enlistment order (the first is the primary)
	envProtocol  = "THREEPC_IT_PROTOCOL"  // 2pc or 3pc
	envFailpoint = "THREEPC_IT_FAILPOINT" // the failpoint at which the child kills itself
	envK         = "THREEPC_IT_K"         // ... at its k-th occurrence (1-based)
	envKey       = "THREEPC_IT_KEY"       // the row key the transaction inserts everywhere
	envTimeout   = "THREEPC_IT_TIMEOUT"   // the coordinator's transaction timeout
	envRefuse    = "THREEPC_IT_REFUSE"    // a resource whose vote is turned into a failure, to take the abort path
	envTxs       = "THREEPC_IT_TXS"       // concurrent transactions (default 1); with more, the kill waits for a batch of several rows
	envOptions   = "THREEPC_IT_OPTIONS"   // comma-separated optimizations: llr, async, batch, ro (MariaDB's read-only vote, off by default); the others are off unless named
)

// errInjected is the failure injected into the vote of THREEPC_IT_REFUSE.
var errInjected = errors.New("injected vote failure")

// crashTable is created in every participant of the crash tests.
const crashTable = "CREATE TABLE crash_rows (k VARCHAR(80) PRIMARY KEY)"

// TestHelperCoordinator is the child process of the crash tests: it runs
// one transaction inserting a row keyed THREEPC_IT_KEY in every
// participant and, at the k-th occurrence of the chosen failpoint, kills
// itself with SIGKILL: a real crash, with no deferred function, no
// rollback and no connection closed politely.
func TestHelperCoordinator(t *testing.T) {
	if os.Getenv(envChild) != "1" {
		return // not a test: the body of the child process
	}
	timeout, err := time.ParseDuration(os.Getenv(envTimeout))
	if err != nil {
		t.Fatalf("child: %s: %v", envTimeout, err)
	}
	k, err := strconv.Atoi(os.Getenv(envK))
	if err != nil {
		t.Fatalf("child: %s: %v", envK, err)
	}
	target := txmanager.Failpoint(os.Getenv(envFailpoint))
	optimized := map[string]bool{}
	for _, o := range strings.Split(os.Getenv(envOptions), ",") {
		optimized[o] = true
	}
	var rs []resource.Resource
	for _, spec := range strings.Split(os.Getenv(envDBs), "|") {
		name, url, err := drivers.ParseSpec(spec)
		if err != nil {
			t.Fatalf("child: %v", err)
		}
		if optimized["ro"] && strings.HasPrefix(url, "mysql://") {
			url += "?" + mysql.ParamReadOnlyVote + "=true"
		}
		r, err := drivers.Open(name, url)
		if err != nil {
			t.Fatalf("child: %v", err)
		}
		rs = append(rs, r)
	}
	txs := 1
	if v := os.Getenv(envTxs); v != "" {
		if txs, err = strconv.Atoi(v); err != nil || txs < 1 {
			t.Fatalf("child: %s=%q", envTxs, v)
		}
	}
	// With several transactions, each waits before its decision until all
	// are there, so that their marker rows queue behind one batch, and the
	// kill counts only batches of several rows.
	var arrived atomic.Int32
	allThere := make(chan struct{})
	var seen atomic.Int32
	// Once the kill is under way, every other goroutine stops at its next
	// failpoint, as in a real crash: the signal takes a moment to land, and
	// a parallel branch must not get its rollback or commit out meanwhile.
	var crashing atomic.Bool
	refuse := os.Getenv(envRefuse)
	hook := func(ctx context.Context, fp txmanager.Failpoint, gtid, res string) error {
		if crashing.Load() {
			select {}
		}
		if fp == txmanager.AfterPrepare && res == refuse {
			return errInjected
		}
		if txs > 1 && fp == txmanager.BeforeDecide {
			if int(arrived.Add(1)) == txs {
				close(allThere)
			}
			select {
			case <-allThere:
			case <-time.After(5 * time.Second):
			}
		}
		if fp == target && (txs == 1 || strings.Contains(gtid, ",")) {
			switch n := int(seen.Add(1)); {
			case n == k:
				if fp == txmanager.AfterBatch {
					fmt.Printf("batch=%s\n", gtid)
				}
				crashing.Store(true)
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {} // SIGKILL cannot be caught; wait for it to land
			case n > k:
				select {} // behind the kill, whatever crashing said a moment ago
			}
		}
		return nil
	}
	m, err := txmanager.New(rs,
		txmanager.WithProtocol(txmanager.Protocol(os.Getenv(envProtocol))),
		txmanager.WithFailpoints(hook),
		txmanager.WithTimeout(timeout),
		txmanager.WithDecideTimeout(timeout/2),
		txmanager.WithCommitTimeout(5*time.Second),
		txmanager.WithInstanceID("crash-child"),
		txmanager.WithLogger(quiet),
		txmanager.WithLastResource(optimized["llr"]),
		txmanager.WithAsyncCleanup(optimized["async"]),
		txmanager.WithBatching(optimized["batch"]),
	)
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	run := func(key string) error {
		return m.Run(context.Background(), func(ctx context.Context, tx *txmanager.Tx) error {
			fmt.Printf("gtid=%s key=%s\n", tx.GTID(), key)
			for _, r := range rs {
				q := "INSERT INTO crash_rows (k) VALUES (" + ph(r, 1) + ")"
				if _, err := tx.DB(r.Name()).ExecContext(ctx, q, key); err != nil {
					return err
				}
			}
			return nil
		})
	}
	key := os.Getenv(envKey)
	if txs == 1 {
		err = run(key)
	} else {
		errs := make([]error, txs)
		var wg sync.WaitGroup
		for i := range txs {
			wg.Go(func() { errs[i] = run(fmt.Sprintf("%s-%d", key, i)) })
		}
		wg.Wait()
		err = errors.Join(errs...)
	}
	// Reaching this line means the failpoint did not fire as planned.
	t.Fatalf("child: transaction ended without the crash at %s#%d (seen %d times): %v", target, k, seen.Load(), err)
}

// crashRun describes one run of the child coordinator.
type crashRun struct {
	parts    []part // enlistment order: parts[0] is the primary
	protocol txmanager.Protocol
	fp       txmanager.Failpoint
	k        int
	key      string
	timeout  time.Duration // default 3s
	refuse   string        // resource whose (successful) vote is reported as a failure
	options  string        // envOptions
	txs      int           // envTxs (0: one transaction)
}

// child starts the coordinator child process for run; wait for its crash
// with (*childProc).crashed.
type childProc struct {
	cmd            *exec.Cmd
	stdout, stderr bytes.Buffer
}

func startChild(t testing.TB, run crashRun) *childProc {
	t.Helper()
	if run.timeout == 0 {
		run.timeout = 3 * time.Second
	}
	specs := make([]string, len(run.parts))
	for i, p := range run.parts {
		specs[i] = p.spec()
	}
	c := &childProc{cmd: exec.Command(os.Args[0], "-test.run=^TestHelperCoordinator$", "-test.count=1", "-test.v=false")}
	c.cmd.Env = append(os.Environ(),
		envChild+"=1",
		envDBs+"="+strings.Join(specs, "|"),
		envProtocol+"="+string(run.protocol),
		envFailpoint+"="+string(run.fp),
		envK+"="+strconv.Itoa(run.k),
		envKey+"="+run.key,
		envTimeout+"="+run.timeout.String(),
		envRefuse+"="+run.refuse,
		envOptions+"="+run.options,
		envTxs+"="+strconv.Itoa(max(run.txs, 1)),
	)
	c.cmd.Stdout, c.cmd.Stderr = &c.stdout, &c.stderr
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("start child: %v", err)
	}
	return c
}

// crashed waits for the child and asserts that it died of SIGKILL; it
// returns the transaction's gtid and the time the death was observed.
func (c *childProc) crashed(t testing.TB) (string, time.Time) {
	t.Helper()
	err := c.cmd.Wait()
	died := time.Now()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("child did not crash (err %v)\nstdout:\n%s\nstderr:\n%s", err, c.stdout.String(), c.stderr.String())
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child ended with %v, not SIGKILL\nstdout:\n%s\nstderr:\n%s", err, c.stdout.String(), c.stderr.String())
	}
	sc := bufio.NewScanner(bytes.NewReader(c.stdout.Bytes()))
	for sc.Scan() {
		if g, ok := strings.CutPrefix(sc.Text(), "gtid="); ok {
			g, _, _ = strings.Cut(g, " ")
			return g, died
		}
	}
	t.Fatalf("child printed no gtid\nstdout:\n%s\nstderr:\n%s", c.stdout.String(), c.stderr.String())
	return "", died
}

// runChild runs the child to its crash.
func runChild(t testing.TB, run crashRun) string {
	t.Helper()
	g, _ := startChild(t, run).crashed(t)
	return g
}
