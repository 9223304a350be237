package txmanager

import (
	"context"
	"time"
)

// WithSequential makes every fan-out run one branch at a time, in
// enlistment order, so that model tests are deterministic.
func WithSequential() Option {
	return optionFunc(func(o *options) error { o.sequential = true; return nil })
}

// WithCommitFirst makes a sequential run (WithSequential) put the
// overlapped commit of the last branch before its precommit row when
// first returns true (see preCommitAndCommit), so the model plays both
// orders.
func WithCommitFirst(first func() bool) Option {
	return optionFunc(func(o *options) error { o.commitFirst = first; return nil })
}

// WithSleep replaces the retry back-off sleep (model tests advance a
// manual clock instead of waiting).
func WithSleep(f func(ctx context.Context, d time.Duration) error) Option {
	return optionFunc(func(o *options) error { o.sleep = f; return nil })
}

// WithPausedCleaner keeps asynchronous clean-up from ever running, as if
// the process died with rows queued: recovery must collect them.
func WithPausedCleaner() Option {
	return optionFunc(func(o *options) error { o.pauseCleaner = true; return nil })
}
