package bank

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/threepc/threepc/resource"
	"github.com/threepc/threepc/txmanager"
)

// Protocol is how a transfer commits.
type Protocol string

// The protocols a workload can run.
const (
	// Local commits the two legs as two independent local transactions:
	// no atomicity, the cost floor.
	Local Protocol = "local"
	// TwoPC is the library in two-phase commit mode.
	TwoPC Protocol = "2pc"
	// ThreePC is the library in three-phase commit mode.
	ThreePC Protocol = "3pc"
	// Handwritten is two-phase commit written by hand with plain
	// database/sql calls: the baseline the library is measured against.
	Handwritten Protocol = "handwritten2pc"
)

// Protocols lists every protocol, in the order benchmarks report them.
var Protocols = []Protocol{Local, Handwritten, TwoPC, ThreePC}

// ParseProtocol checks a protocol name.
func ParseProtocol(s string) (Protocol, error) {
	for _, p := range Protocols {
		if string(p) == s {
			return p, nil
		}
	}
	return "", fmt.Errorf("threepc/bank: unknown protocol %q (want local, handwritten2pc, 2pc or 3pc)", s)
}

// Atomic reports whether the protocol keeps the total balance.
func (p Protocol) Atomic() bool { return p != Local }

// Config configures a Workload.
type Config struct {
	// Resources are the databases; at least two. Their bank tables must
	// be set up (Setup).
	Resources []resource.Resource
	Protocol  Protocol
	// Timeout is the transaction timeout (txmanager.WithTimeout): what
	// breaks distributed deadlocks. Default 5 s.
	Timeout time.Duration
	// MaxAmount bounds the amount of one transfer (1..MaxAmount). Default
	// 100. Balances may go negative: the invariant is the total.
	MaxAmount int64
	// Phases records per-phase latencies of the library protocols through
	// failpoint hooks.
	Phases bool
	// Failpoint, if set, is called at every failpoint after the phase
	// recorder (the demo's child kills itself from here).
	Failpoint txmanager.FailpointFunc
	// Logger for the coordinator; default slog.Default().
	Logger *slog.Logger
	// Options are extra coordinator options.
	Options []txmanager.Option
	// Namespace is the deployment's namespace (txmanager.WithNamespace),
	// also used by the hand-written baseline's branch ids.
	Namespace string
	// Legs is how many databases one transfer touches (2 to the number
	// of Resources). Default 2.
	Legs int
	// ParallelLegs runs a transfer's legs concurrently, one goroutine per
	// database, as application code can (branch handles may be used from
	// several goroutines); by default they run one after another.
	ParallelLegs bool
}

// Workload runs transfers. It is safe for concurrent use.
type Workload struct {
	cfg      Config
	accounts map[string]int64
	dialect  map[string]string
	update   map[string]string
	multi    map[string]bool   // MySQL: the pool runs multi-statement queries
	dbTag    map[string]string // MySQL: resource.DatabaseTag of the schema
	sessions sync.Map          // MySQL driver connection -> CONNECTION_ID() (handwritten2pc)
	space    string
	outcomes *outcomeRecorder
	mgr      *txmanager.Manager
	// hwCleaner settles the hand-written baseline's marker rows.
	hwCleaner *hwCleaner
	phases    *phaseRecorder
	names     []string
	byName    map[string]resource.Resource
}

// New reads the bank's layout from every database and prepares the
// coordinator for cfg.Protocol.
func New(ctx context.Context, cfg Config) (*Workload, error) {
	if len(cfg.Resources) < 2 {
		return nil, fmt.Errorf("threepc/bank: transfers need at least two databases, got %d", len(cfg.Resources))
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.MaxAmount <= 0 {
		cfg.MaxAmount = 100
	}
	if cfg.Legs == 0 {
		cfg.Legs = 2
	}
	if cfg.Legs < 2 || cfg.Legs > len(cfg.Resources) {
		return nil, fmt.Errorf("threepc/bank: a transfer touches 2 to %d databases (the ones given), not %d", len(cfg.Resources), cfg.Legs)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	w := &Workload{
		cfg: cfg, accounts: map[string]int64{}, dialect: map[string]string{},
		update: map[string]string{}, byName: map[string]resource.Resource{},
		multi: map[string]bool{}, dbTag: map[string]string{},
	}
	if err := resource.ValidateNamespace(cfg.Namespace); err != nil {
		return nil, err
	}
	w.space = resource.SpaceTag(cfg.Namespace)
	for _, r := range cfg.Resources {
		st, err := Read(ctx, r)
		if err != nil {
			return nil, err
		}
		w.accounts[r.Name()] = st.Accounts
		w.dialect[r.Name()] = Dialect(r)
		w.update[r.Name()] = updateSQL(Dialect(r))
		w.names = append(w.names, r.Name())
		w.byName[r.Name()] = r
		if Dialect(r) == "mysql" {
			// Two statements in one query need the driver's
			// multiStatements; without it the leg takes two round trips.
			_, err := resource.DBOf(r).ExecContext(ctx, "DO 1; DO 1")
			w.multi[r.Name()] = err == nil
			var schema sql.NullString
			if err := resource.DBOf(r).QueryRowContext(ctx, "SELECT DATABASE()").Scan(&schema); err != nil || !schema.Valid {
				return nil, fmt.Errorf("threepc/bank: %s: reading the database name: %v", r.Name(), err)
			}
			w.dbTag[r.Name()] = resource.DatabaseTag(schema.String)
		}
	}
	switch cfg.Protocol {
	case TwoPC, ThreePC:
		opts := []txmanager.Option{
			txmanager.WithProtocol(txmanager.Protocol(cfg.Protocol)),
			txmanager.WithTimeout(cfg.Timeout),
			txmanager.WithLogger(cfg.Logger),
			txmanager.WithNamespace(cfg.Namespace),
		}
		if cfg.Phases {
			w.phases = newPhaseRecorder()
		}
		if cfg.Phases || cfg.Failpoint != nil {
			opts = append(opts, txmanager.WithFailpoints(w.failpoint))
		}
		opts = append(opts, cfg.Options...)
		m, err := txmanager.New(cfg.Resources, opts...)
		if err != nil {
			return nil, err
		}
		w.mgr = m
	case Handwritten:
		w.hwCleaner = newHWCleaner(w)
	case Local:
	default:
		return nil, fmt.Errorf("threepc/bank: unknown protocol %q", cfg.Protocol)
	}
	w.outcomes = newOutcomeRecorder(cfg.Resources[0], cfg.Logger)
	return w, nil
}

// Manager returns the coordinator of the library protocols (nil for the
// others).
func (w *Workload) Manager() *txmanager.Manager { return w.mgr }

// Close writes the outcomes not yet recorded and flushes the
// coordinator's asynchronous marker clean-up, if any.
func (w *Workload) Close(ctx context.Context) error {
	var err error
	if n := w.outcomes.close(); n > 0 {
		err = fmt.Errorf("threepc/bank: %d transfer outcomes could not be recorded in %s", n, OutcomeTable)
	}
	if w.mgr != nil {
		err = errors.Join(err, w.mgr.Close(ctx))
	}
	if w.hwCleaner != nil {
		w.hwCleaner.close()
	}
	return err
}

func (w *Workload) failpoint(ctx context.Context, fp txmanager.Failpoint, gtid, res string) error {
	if w.phases != nil {
		w.phases.mark(gtid, fp)
	}
	if w.cfg.Failpoint != nil {
		return w.cfg.Failpoint(ctx, fp, gtid, res)
	}
	return nil
}

// Outcome classifies a transfer's result.
type Outcome int

// Outcomes. They follow txmanager's error classes.
const (
	Committed     Outcome = iota
	Aborted               // rolled back: money did not move
	InDoubt               // decision unknown: recovery finishes it
	CommitPending         // decided to commit; recovery completes it
	Heuristic             // decided to commit, but a branch contradicts it: an operator must act
	Failed                // any other error
)

func (o Outcome) String() string { return string(o.Told()) }

// Result is one transfer's result.
type Result struct {
	Outcome  Outcome
	Latency  time.Duration
	Err      error
	Timeout  bool // aborted by the transaction timeout (a distributed deadlock, or a slow server)
	Phases   PhaseTimes
	HasPhase bool
}

// Classify maps a commit error to an Outcome.
func Classify(err error) Outcome {
	switch txmanager.OutcomeOf(err) {
	case txmanager.OutcomeCommitted:
		return Committed
	case txmanager.OutcomeHeuristic:
		return Heuristic
	case txmanager.OutcomeInDoubt:
		return InDoubt
	case txmanager.OutcomeCommitPending:
		return CommitPending
	case txmanager.OutcomeAborted:
		return Aborted
	}
	return Failed
}

// leg is one half of a transfer: add delta to account id on resource.
type leg struct {
	res   string
	id    int64
	delta int64
}

// pick chooses a random transfer between Legs different databases: the
// first leg pays what the others receive.
func (w *Workload) pick(rng *rand.Rand) []leg {
	n := w.cfg.Legs
	order := rng.Perm(len(w.names))[:n]
	legs := make([]leg, n)
	var total int64
	for i, k := range order[1:] {
		amt := 1 + rng.Int64N(w.cfg.MaxAmount)
		total += amt
		legs[i+1] = leg{res: w.names[k], id: 1 + rng.Int64N(w.accounts[w.names[k]]), delta: amt}
	}
	legs[0] = leg{res: w.names[order[0]], id: 1 + rng.Int64N(w.accounts[w.names[order[0]]]), delta: -total}
	return legs
}

// Transfer moves a random amount between random accounts of two
// different databases, with the workload's protocol.
func (w *Workload) Transfer(ctx context.Context, rng *rand.Rand) Result {
	legs := w.pick(rng)
	start := time.Now()
	var (
		res  Result
		err  error
		gtid string
		t    transfer
	)
	switch w.cfg.Protocol {
	case Local:
		t = newTransfer(ulid.Make().String(), legs...)
		err = w.local(ctx, t)
	case Handwritten:
		t = newTransfer(ulid.Make().String(), legs...)
		err = w.handwritten(ctx, t)
	default:
		err = w.mgr.Run(ctx, func(ctx context.Context, tx *txmanager.Tx) error {
			gtid = tx.GTID()
			t = newTransfer(gtid, legs...)
			if w.phases != nil {
				w.phases.begin(gtid, start)
			}
			return w.eachLeg(len(t.legs), func(i int) error {
				return w.execLeg(ctx, tx.DB(t.legs[i].res), t, i, nil)
			})
		})
	}
	res.Latency = time.Since(start)
	res.Err = err
	res.Outcome = Classify(err)
	if t.id != "" {
		o := outcomeRow{transfer: t.id, outcome: string(res.Outcome.Told()), participants: t.participants, protocol: string(w.cfg.Protocol)}
		if err != nil {
			o.detail = shorten(err.Error())
		}
		w.outcomes.add(o)
	}
	res.Timeout = errors.Is(err, txmanager.ErrTimeout) || errors.Is(err, context.DeadlineExceeded)
	if w.phases != nil && gtid != "" {
		res.Phases, res.HasPhase = w.phases.end(gtid, res.Outcome == Committed)
	}
	return res
}

// eachLeg runs f for legs 0..n-1, one after another, stopping at the
// first error, or (ParallelLegs) all at once; it returns the error of the
// first failed leg.
func (w *Workload) eachLeg(n int, f func(i int) error) error {
	if !w.cfg.ParallelLegs {
		for i := range n {
			if err := f(i); err != nil {
				return err
			}
		}
		return nil
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n - 1 {
		wg.Go(func() { errs[i] = f(i) })
	}
	errs[n-1] = f(n - 1)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// local runs the legs as two independent local transactions.
func (w *Workload) local(ctx context.Context, t transfer) error {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
	defer cancel()
	for i, l := range t.legs {
		db := resource.DBOf(w.byName[l.res])
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return localErr(l.res, err)
		}
		if err := w.execLeg(ctx, tx, t, i, nil); err != nil {
			_ = tx.Rollback()
			return localErr(l.res, err)
		}
		if err := tx.Commit(); err != nil {
			return localErr(l.res, err)
		}
	}
	return nil
}

// localErr reports a failed local leg as an abort: with no atomicity an
// earlier leg may have committed, which is what "local" measures.
func localErr(res string, err error) error {
	return &txmanager.AbortError{Resource: res, Phase: resource.PhaseWork, Err: err}
}
