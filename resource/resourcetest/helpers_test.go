package resourcetest

import (
	"errors"
	"testing"
	"time"

	"github.com/threepc/threepc/resource"
)

// The suite itself needs a real server; these tests cover what runs
// without one.

func TestNewGTID(t *testing.T) {
	prev := ""
	for range 1000 {
		g := NewGTID()
		if err := resource.ValidateGTID(g); err != nil {
			t.Fatalf("NewGTID() = %q: %v", g, err)
		}
		if g <= prev {
			t.Fatalf("NewGTID() = %q after %q: gtids must sort by creation", g, prev)
		}
		if age := time.Since(resource.GTIDTime(g)); age < 0 || age > time.Minute {
			t.Fatalf("NewGTID() = %q encodes a time %v from now", g, age)
		}
		prev = g
	}
}

func TestUniqueName(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		// The longest base the suite uses.
		n := uniqueName("rt_list_other")
		if err := resource.ValidateName(n); err != nil {
			t.Fatalf("uniqueName: %v", err)
		}
		if seen[n] {
			t.Fatalf("uniqueName repeated %q", n)
		}
		seen[n] = true
	}
}

type systemOnly struct {
	resource.Resource
	system string
}

func (s systemOnly) System() string { return s.system }

func TestPlaceholder(t *testing.T) {
	for _, tc := range []struct {
		system string
		want   string
	}{{"postgresql", "$2"}, {"mysql", "?"}, {"mariadb", "?"}} {
		if got := Placeholder(systemOnly{system: tc.system}, 2); got != tc.want {
			t.Errorf("Placeholder(%s, 2) = %q, want %q", tc.system, got, tc.want)
		}
	}
}

func TestRetryUnreachable(t *testing.T) {
	calls := 0
	err := RetryUnreachable(10*time.Second, func() error {
		calls++
		if calls < 3 {
			return resource.ErrUnreachable
		}
		return resource.ErrUnknownBranch
	})
	if calls != 3 || !errors.Is(err, resource.ErrUnknownBranch) {
		t.Errorf("RetryUnreachable: %d calls, err %v; want 3 calls ending in ErrUnknownBranch", calls, err)
	}
}

// A nil Target.Kill skips the crash subtest, before it touches anything.
func TestCrashSkippedWithoutKill(t *testing.T) {
	var inner *testing.T
	t.Run("SurvivesServerCrash", func(t *testing.T) {
		inner = t
		TestSurvivesServerCrash(t, Target{New: func(t *testing.T, _ string) resource.Resource {
			t.Fatal("Target.New called by the crash subtest without Target.Kill")
			return nil
		}})
	})
	if !inner.Skipped() {
		t.Error("TestSurvivesServerCrash with a nil Kill: not skipped")
	}
}
