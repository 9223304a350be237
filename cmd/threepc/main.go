// Command threepc runs, checks, benchmarks and repairs distributed
// transactions across PostgreSQL and MySQL/MariaDB databases.
//
//	threepc demo                                   # zero-configuration tour
//	threepc migrate --db a=postgres://... --db b=mysql://...
//	threepc bank setup|run|check --db ...          # the transfer workload
//	threepc bench --db ... --protocols local,handwritten2pc,2pc,3pc
//	threepc recover --db ...                       # finish in-doubt transactions
//	threepc inspect --db ...                       # show them, change nothing
//
// Exit codes: 0 success; 1 the checked property failed (money not
// conserved, a run that failed midway); 2 bad input or setup (malformed
// --db, unknown scheme, unreachable server, missing migrations, prepared
// transactions disabled), with nothing changed; 3 something is left in
// doubt (recover, inspect, bank check); 4 a heuristic outcome: a branch
// contradicts its transaction's decision and an operator must act. See
// docs/CLI.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/threepc/threepc/resource"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailed  = 1 // the checked property does not hold
	exitUsage   = 2 // bad input or setup; nothing was changed
	exitInDoubt = 3 // something is left in doubt
	// exitHeuristic: a branch contradicts the decision of its transaction
	// (txmanager.ErrHeuristic, recovery.ActionHeuristic). Not 3: recovery
	// alone will not finish it; an operator must act first.
	exitHeuristic = 4
)

// exitError carries an exit code and a one-line message.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageErrorf(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

func failedErrorf(format string, args ...any) error {
	return &exitError{code: exitFailed, err: fmt.Errorf(format, args...)}
}

func inDoubtErrorf(format string, args ...any) error {
	return &exitError{code: exitInDoubt, err: fmt.Errorf(format, args...)}
}

func heuristicErrorf(format string, args ...any) error {
	return &exitError{code: exitHeuristic, err: fmt.Errorf(format, args...)}
}

// globals are the flags every command takes, and what the root command
// sets up for all of them.
type globals struct {
	dbs       []string
	logLevel  string
	namespace string
	// flushTelemetry flushes and stops the OTLP exporters installed at
	// start-up. run calls it after every command, also one that failed or
	// was interrupted: cobra runs no post-run hook after an error, and
	// the spans of the transactions that finished before a Ctrl-C are
	// the ones an operator wants to see.
	flushTelemetry func(context.Context) error
}

// telemetryFlushTimeout bounds the export at exit: a collector that is
// down must not keep the command from exiting.
const telemetryFlushTimeout = 10 * time.Second

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		// A second Ctrl-C kills the process as usual.
		<-ctx.Done()
		stop()
	}()

	g := &globals{}
	root := newRoot(g)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if g.flushTelemetry != nil {
		fctx, cancel := context.WithTimeout(context.Background(), telemetryFlushTimeout)
		if ferr := g.flushTelemetry(fctx); ferr != nil {
			slog.Warn("threepc: exporting telemetry at exit", "err", ferr)
		}
		cancel()
	}
	if err == nil {
		return exitOK
	}
	code := exitFailed
	var ee *exitError
	switch {
	case errors.As(err, &ee):
		code = ee.code
	case isCobraUsageError(err):
		code = exitUsage
	}
	fmt.Fprintln(os.Stderr, "threepc: "+message(err))
	return code
}

func newRoot(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:   "threepc",
		Short: "Atomic transactions across PostgreSQL and MySQL/MariaDB: demo, workload, benchmark, recovery",
		Long: `threepc commits one transaction atomically across PostgreSQL and MySQL/MariaDB
databases with three-phase commit, keeping its decision in the databases
themselves. This command runs a demo, a bank-transfer workload and a
benchmark, and finishes transactions whose coordinator died.

Databases are given as --db NAME=URL, repeated:
  --db pg=postgres://user:pass@127.0.0.1:5432/app?sslmode=disable
  --db maria=mysql://user:pass@127.0.0.1:3306/app

Exit codes: 0 ok, 1 check failed, 2 bad input or setup (nothing changed),
3 something left in doubt, 4 a heuristic outcome (an operator must act).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			lvl, err := parseLevel(g.logLevel)
			if err != nil {
				return err
			}
			if err := resource.ValidateNamespace(g.namespace); err != nil {
				return usageErrorf("--namespace: %v", err)
			}
			slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})))
			g.flushTelemetry, err = setupTelemetry(cmd.Context())
			if err != nil {
				return usageErrorf("telemetry: %v", err)
			}
			return nil
		},
	}
	root.PersistentFlags().StringArrayVar(&g.dbs, "db", nil, "a database as NAME=URL (postgres://... or mysql://user:pass@host:port/db); repeat for each")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "warn", "log level: debug, info, warn or error")
	root.PersistentFlags().StringVar(&g.namespace, "namespace", "", "the deployment's namespace: coordinators and recovery act only on their own namespace's branches (default: the default namespace)")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &exitError{code: exitUsage, err: err}
	})
	root.AddCommand(
		newMigrateCmd(g),
		newBankCmd(g),
		newBenchCmd(g),
		newRecoverCmd(g),
		newInspectCmd(g),
		newDemoCmd(g),
		newDemoChildCmd(g),
	)
	return root
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, usageErrorf("--log-level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

// isCobraUsageError recognises cobra's own argument errors, which it
// returns as plain errors.
func isCobraUsageError(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand", "accepts ", "requires ", "invalid argument"} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}

// message is err's text for the command's one-line error, which starts
// with "threepc: " already: the library's sentinels, wrapped inside the
// chain, each bring that prefix too ("threepc: --db: threepc: invalid
// resource name ..."), so it is dropped after the first. Prefixes of the
// packages ("threepc/mysql: ") stay: they say which driver answered.
func message(err error) string {
	s := oneLine(err.Error())
	s = strings.TrimPrefix(s, "threepc: ")
	return strings.ReplaceAll(s, ": threepc: ", ": ")
}

// oneLine folds a message onto one line.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
