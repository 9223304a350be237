package bank

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/threepc/threepc/resource"
)

// A transfer's ledger: every leg inserts (transfer id, leg) into
// LedgerTable of its own database, in the same local transaction or
// branch as its balance update, so the row is visible iff the leg
// committed. A transfer is atomic iff its row is in every database it
// touched or in none; CheckLedger finds the others, and compares with
// what the client was told (OutcomeTable).

// execer is what a leg runs on: a branch handle, a local transaction or a
// pinned connection.
type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// transfer is one transfer: its id (the gtid for the transaction
// protocols), its legs, and the databases it touches.
type transfer struct {
	id           string
	legs         []leg
	participants string // sorted, comma-separated
}

func newTransfer(id string, legs ...leg) transfer {
	names := make([]string, 0, len(legs))
	for _, l := range legs {
		names = append(names, l.res)
	}
	slices.Sort(names)
	return transfer{id: id, legs: legs, participants: strings.Join(slices.Compact(names), ",")}
}

// evidenceRow is the evidence row a hand-written branch inserts for
// recovery (resource.EvidenceState), or nothing.
type evidenceRow struct {
	gtid, primary, space string
}

// execLeg runs leg i of t on e: the balance update and the ledger row
// (and, for the hand-written baseline, the branch's evidence row) in one
// round trip where the database allows it: one statement with data-
// modifying CTEs on PostgreSQL, a multi-statement query on MySQL.
func (w *Workload) execLeg(ctx context.Context, e execer, t transfer, i int, ev *evidenceRow) error {
	l := t.legs[i]
	proto := string(w.cfg.Protocol)
	switch {
	case w.dialect[l.res] == "postgres" && ev == nil:
		_, err := e.ExecContext(ctx, pgLegSQL, l.delta, l.id, t.id, i, t.participants, proto)
		return err
	case w.dialect[l.res] == "postgres":
		_, err := e.ExecContext(ctx, pgLegEvidenceSQL, l.delta, l.id, t.id, i, t.participants, proto, ev.gtid, l.res, ev.primary, ev.space)
		return err
	case w.multi[l.res] && validID(t.id) && (ev == nil || validID(ev.gtid) && validID(ev.primary) && validID(ev.space)):
		// Every value is an integer or a validated identifier (gtids
		// and resource names are [0-9A-Za-z_-]), so literals are safe.
		q := fmt.Sprintf("UPDATE %s SET balance = balance + %d WHERE id = %d; INSERT INTO %s (transfer, leg, account, delta, participants, protocol) VALUES ('%s', %d, %d, %d, '%s', '%s')",
			AccountsTable, l.delta, l.id, LedgerTable, t.id, i, l.id, l.delta, t.participants, proto)
		if ev != nil {
			q += fmt.Sprintf("; "+evidenceSQL, "'"+ev.gtid+"'", "'"+l.res+"'", "'"+ev.primary+"'", "'"+ev.space+"'")
		}
		_, err := e.ExecContext(ctx, q)
		return err
	}
	if _, err := e.ExecContext(ctx, w.update[l.res], l.delta, l.id); err != nil {
		return err
	}
	if _, err := e.ExecContext(ctx, ledgerSQL("mysql"), t.id, i, l.id, l.delta, t.participants, proto); err != nil {
		return err
	}
	if ev != nil {
		_, err := e.ExecContext(ctx, fmt.Sprintf(evidenceSQL, "?", "?", "?", "?"), ev.gtid, l.res, ev.primary, ev.space)
		return err
	}
	return nil
}

// evidenceSQL inserts a branch's evidence row (gtid, branch, primary,
// namespace tag).
const evidenceSQL = "INSERT INTO " + resource.MarkerTable + " (gtid, branch, state, primary_name, participants, owner, space) VALUES (%s, %s, '" +
	resource.EvidenceState + "', %s, '', '', %s)"

// pgLegEvidenceSQL is pgLegSQL plus the evidence row ($7 gtid, $8 branch,
// $9 primary, $10 namespace tag).
var pgLegEvidenceSQL = "WITH ledger AS (INSERT INTO " + LedgerTable + " (transfer, leg, account, delta, participants, protocol) " +
	"VALUES ($3, $4, $2, $1, $5, $6)), evidence AS (" + fmt.Sprintf(evidenceSQL, "$7", "$8", "$9", "$10") + ") " +
	"UPDATE " + AccountsTable + " SET balance = balance + $1 WHERE id = $2"

// validID reports whether s can be written as a SQL literal as is.
func validID(s string) bool {
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c == '-' || c == ',') {
			return false
		}
	}
	return s != ""
}

// outcomeRow is what the client was told about one transfer.
type outcomeRow struct {
	transfer, outcome, participants, protocol, detail string
}

// outcomeRecorder writes what the client was told into OutcomeTable of one
// database, after the fact, in batches: off the transfers' path (one
// multi-row INSERT every flushEvery), and robust to a killed client: a
// row is written only once the client has its answer, so a killed client
// can lose the last batch of claims (those transfers show as "not
// recorded") but never records a claim it was not given. A local file
// would lose nothing on SIGKILL, but `bank check` on another machine
// could not find it; the table travels with the bank.
type outcomeRecorder struct {
	r       resource.Resource
	dialect string
	logger  *slog.Logger

	mu   sync.Mutex
	buf  []outcomeRow
	lost int64

	kick    chan struct{}
	stop    chan struct{}
	stopped chan struct{}
	once    sync.Once
}

const (
	flushEvery = 50 * time.Millisecond
	flushBatch = 200
)

func newOutcomeRecorder(r resource.Resource, logger *slog.Logger) *outcomeRecorder {
	rec := &outcomeRecorder{r: r, dialect: Dialect(r), logger: logger,
		kick: make(chan struct{}, 1), stop: make(chan struct{}), stopped: make(chan struct{})}
	go rec.loop()
	return rec
}

func (rec *outcomeRecorder) add(o outcomeRow) {
	rec.mu.Lock()
	rec.buf = append(rec.buf, o)
	n := len(rec.buf)
	rec.mu.Unlock()
	if n >= flushBatch {
		select {
		case rec.kick <- struct{}{}:
		default:
		}
	}
}

func (rec *outcomeRecorder) loop() {
	defer close(rec.stopped)
	t := time.NewTicker(flushEvery)
	defer t.Stop()
	for {
		select {
		case <-rec.stop:
			rec.flush()
			return
		case <-t.C:
		case <-rec.kick:
		}
		rec.flush()
	}
}

func (rec *outcomeRecorder) flush() {
	rec.mu.Lock()
	rows := rec.buf
	rec.buf = nil
	rec.mu.Unlock()
	for len(rows) > 0 {
		n := min(len(rows), flushBatch)
		if err := rec.insert(rows[:n]); err != nil {
			rec.mu.Lock()
			first := rec.lost == 0
			rec.lost += int64(n)
			rec.mu.Unlock()
			if first {
				rec.logger.Warn("threepc bank: recording transfer outcomes failed; `bank check` cannot compare them", "database", rec.r.Name(), "err", err)
			}
		}
		rows = rows[n:]
	}
}

func (rec *outcomeRecorder) insert(rows []outcomeRow) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if rec.dialect == "postgres" {
		// One statement text whatever the batch's size: pgx caches a
		// prepared statement per text and connection, and a text per
		// size would fill that cache (and the heap of a long run).
		cols := make([][]string, 5)
		for _, o := range rows {
			for k, v := range []string{o.transfer, o.outcome, o.participants, o.protocol, o.detail} {
				cols[k] = append(cols[k], v)
			}
		}
		_, err := resource.DBOf(rec.r).ExecContext(ctx, "INSERT INTO "+OutcomeTable+" (transfer, outcome, participants, protocol, detail) "+
			"SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])", cols[0], cols[1], cols[2], cols[3], cols[4])
		return err
	}
	var b strings.Builder
	b.WriteString("INSERT INTO " + OutcomeTable + " (transfer, outcome, participants, protocol, detail) VALUES ")
	args := make([]any, 0, 5*len(rows))
	for i, o := range rows {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('(')
		for k := range 5 {
			if k > 0 {
				b.WriteByte(',')
			}
			b.WriteString(placeholder(rec.dialect, 5*i+k+1))
		}
		b.WriteByte(')')
		args = append(args, o.transfer, o.outcome, o.participants, o.protocol, o.detail)
	}
	_, err := resource.DBOf(rec.r).ExecContext(ctx, b.String(), args...)
	return err
}

// close writes what is buffered and stops the recorder; it returns how
// many outcomes could not be written.
func (rec *outcomeRecorder) close() int64 {
	rec.once.Do(func() { close(rec.stop) })
	<-rec.stopped
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return rec.lost
}

// Told is an outcome as recorded in OutcomeTable.
type Told string

// The outcomes a client can be told.
const (
	ToldCommitted     Told = "committed"
	ToldAborted       Told = "aborted"
	ToldInDoubt       Told = "in doubt"
	ToldCommitPending Told = "commit pending"
	ToldHeuristic     Told = "heuristic"
	ToldFailed        Told = "failed"
	// ToldNothing: the transfer is in the ledger but no outcome was
	// recorded (the client died before it was told, or before the
	// recorder's last batch).
	ToldNothing Told = "not recorded"
)

// Told returns the outcome as recorded.
func (o Outcome) Told() Told {
	return [...]Told{ToldCommitted, ToldAborted, ToldInDoubt, ToldCommitPending, ToldHeuristic, ToldFailed}[o]
}

// LedgerTransfer is one transfer as the ledger and the outcome table
// know it.
type LedgerTransfer struct {
	ID           string // the gtid for 2pc, 3pc and handwritten2pc
	Protocol     string
	Participants []string // the databases it touches
	Present      []string // the databases that hold its ledger row
	Told         Told
	Detail       string // the error the client was told, shortened
	Why          string // for a contradiction: what contradicts what
}

// Missing returns the participants that lack the ledger row.
func (t LedgerTransfer) Missing() []string {
	var out []string
	for _, p := range t.Participants {
		if !slices.Contains(t.Present, p) {
			out = append(out, p)
		}
	}
	return out
}

// LedgerReport is the verdict of CheckLedger.
type LedgerReport struct {
	Transfers   int          // distinct transfers in the ledger or the outcome table
	Told        map[Told]int // by recorded outcome (ToldNothing: in the ledger, no outcome)
	Partial     []LedgerTransfer
	Contradict  []LedgerTransfer
	Heuristic   []LedgerTransfer // told heuristic
	Unsettled   []LedgerTransfer // partial or contradicting, but still in doubt: not judged yet
	UnknownDB   []string         // participants named in the ledger that were not checked
	LedgerRows  map[string]int64 // per database
	LedgerSum   map[string]int64 // per database: the sum of the legs' deltas
	Outcomes    int              // outcome rows read
	Unjudgeable int              // transfers whose participants were not all checked
}

// Failed reports whether the ledger shows a broken transfer or a wrong
// answer.
func (r *LedgerReport) Failed() bool { return len(r.Partial) > 0 || len(r.Contradict) > 0 }

// CheckLedger reads the ledger and the outcome table of every database and
// judges every transfer: present in some participants but not all
// (partial), or contradicting what the client was told (told committed or
// commit pending but missing somewhere; told aborted but present
// somewhere). Transfers for which inDoubt returns true are not judged:
// recovery has not finished them.
func CheckLedger(ctx context.Context, rs []resource.Resource, inDoubt func(id string) bool) (*LedgerReport, error) {
	rep := &LedgerReport{Told: map[Told]int{}, LedgerRows: map[string]int64{}, LedgerSum: map[string]int64{}}
	txs := map[string]*LedgerTransfer{}
	get := func(id string) *LedgerTransfer {
		t, ok := txs[id]
		if !ok {
			t = &LedgerTransfer{ID: id}
			txs[id] = t
		}
		return t
	}
	known := map[string]bool{}
	for _, r := range rs {
		known[r.Name()] = true
	}
	for _, r := range rs {
		rows, err := resource.DBOf(r).QueryContext(ctx, "SELECT transfer, delta, participants, protocol FROM "+LedgerTable)
		if err != nil {
			return nil, fmt.Errorf("threepc/bank: %s: reading %s: %w", r.Name(), LedgerTable, err)
		}
		for rows.Next() {
			var id, parts, proto string
			var delta int64
			if err := rows.Scan(&id, &delta, &parts, &proto); err != nil {
				rows.Close()
				return nil, fmt.Errorf("threepc/bank: %s: %w", r.Name(), err)
			}
			t := get(id)
			t.Participants, t.Protocol = strings.Split(parts, ","), proto
			if !slices.Contains(t.Present, r.Name()) {
				t.Present = append(t.Present, r.Name())
			}
			rep.LedgerRows[r.Name()]++
			rep.LedgerSum[r.Name()] += delta
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("threepc/bank: %s: reading %s: %w", r.Name(), LedgerTable, err)
		}
	}
	for _, r := range rs {
		rows, err := resource.DBOf(r).QueryContext(ctx, "SELECT transfer, outcome, participants, protocol, detail FROM "+OutcomeTable)
		if err != nil {
			return nil, fmt.Errorf("threepc/bank: %s: reading %s: %w", r.Name(), OutcomeTable, err)
		}
		for rows.Next() {
			var o outcomeRow
			if err := rows.Scan(&o.transfer, &o.outcome, &o.participants, &o.protocol, &o.detail); err != nil {
				rows.Close()
				return nil, fmt.Errorf("threepc/bank: %s: %w", r.Name(), err)
			}
			rep.Outcomes++
			t := get(o.transfer)
			t.Told, t.Detail, t.Protocol = Told(o.outcome), o.detail, o.protocol
			t.Participants = strings.Split(o.participants, ",")
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("threepc/bank: %s: reading %s: %w", r.Name(), OutcomeTable, err)
		}
	}
	unknown := map[string]bool{}
	for _, id := range slices.Sorted(maps.Keys(txs)) {
		t := txs[id]
		slices.Sort(t.Present)
		if t.Told == "" {
			t.Told = ToldNothing
		}
		rep.Told[t.Told]++
		if t.Told == ToldHeuristic {
			rep.Heuristic = append(rep.Heuristic, *t)
		}
		judgeable := true
		for _, p := range t.Participants {
			if !known[p] {
				unknown[p], judgeable = true, false
			}
		}
		if !judgeable {
			rep.Unjudgeable++
			continue
		}
		missing := t.Missing()
		partial := len(t.Present) > 0 && len(missing) > 0
		switch t.Told {
		case ToldCommitted, ToldCommitPending:
			if len(missing) > 0 {
				t.Why = fmt.Sprintf("told %s, but missing in %s", t.Told, strings.Join(missing, ","))
			}
		case ToldAborted:
			if len(t.Present) > 0 {
				t.Why = fmt.Sprintf("told aborted, but present in %s", strings.Join(t.Present, ","))
			}
		}
		if (partial || t.Why != "") && inDoubt != nil && inDoubt(id) {
			rep.Unsettled = append(rep.Unsettled, *t)
			continue
		}
		if partial {
			rep.Partial = append(rep.Partial, *t)
		}
		if t.Why != "" {
			rep.Contradict = append(rep.Contradict, *t)
		}
	}
	rep.Transfers = len(txs)
	rep.UnknownDB = slices.Sorted(maps.Keys(unknown))
	return rep, nil
}

// shorten keeps an error message short enough for the detail column.
func shorten(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 250 {
		s = s[:247] + "..."
	}
	return s
}
