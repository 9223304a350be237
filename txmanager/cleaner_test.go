package txmanager_test

import (
	"context"
	"testing"
	"time"

	"github.com/threepc/threepc/internal/memres"
	"github.com/threepc/threepc/txmanager"
)

// TestAsyncCleanup: with asynchronous clean-up, Commit leaves the marker
// rows to a background loop; Close flushes them; after Close, Commit
// cleans up itself.
func TestAsyncCleanup(t *testing.T) {
	clock := memres.NewClock(time.Now())
	w := memres.NewWorld(clock, "a", "b")
	m, err := txmanager.New(w.NewProc("coord").Resources(), txmanager.WithAsyncCleanup(true), txmanager.WithLogger(quietLog))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Close(context.Background()); err != nil {
		t.Fatalf("Close of an idle manager: %v", err)
	}
	m, err = txmanager.New(w.NewProc("coord2").Resources(), txmanager.WithAsyncCleanup(true), txmanager.WithLogger(quietLog))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	commit := func() {
		t.Helper()
		err := m.Run(ctx, func(ctx context.Context, tx *txmanager.Tx) error {
			for _, n := range []string{"a", "b"} {
				if _, err := tx.DB(n).ExecContext(ctx, "UPDATE"); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	for range 50 {
		commit()
	}
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := w.CheckClean(); err != nil {
		t.Fatalf("after Close: %v", err)
	}
	commit() // after Close: synchronous clean-up
	if err := w.CheckClean(); err != nil {
		t.Fatalf("commit after Close: %v", err)
	}
}
