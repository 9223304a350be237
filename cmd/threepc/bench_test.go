package main

import (
	"runtime"
	"slices"
	"strings"
	"testing"
)

func TestParseBenchVariant(t *testing.T) {
	v, err := parseBenchVariant("3pc+ro+nollr+noasync")
	if err != nil {
		t.Fatal(err)
	}
	if v.base != "3pc" || len(v.opts) != 2 || v.mysqlParams != "threepc_read_only_vote=true" {
		t.Errorf("variant = %+v", v)
	}
	if v, err := parseBenchVariant("2pc+nobatch"); err != nil || v.mysqlParams != "" || len(v.opts) != 1 {
		t.Errorf("2pc+nobatch = %+v, %v; want one option and the MySQL driver's defaults", v, err)
	}
	for _, bad := range []string{"3pc+", "local+nollr", "handwritten2pc+ro", "3pc+turbo", "4pc", "3pc+attached", "2pc+nollr+attached"} {
		if _, err := parseBenchVariant(bad); err == nil {
			t.Errorf("parseBenchVariant(%q): no error", bad)
		}
	}
	// What is a default now is refused with a message saying so.
	for _, old := range []string{"3pc+noro", "3pc+llr", "2pc+async"} {
		if _, err := parseBenchVariant(old); err == nil || !strings.Contains(err.Error(), "default") {
			t.Errorf("%s: %v, want an error saying it is the default now", old, err)
		}
	}
	specs := []string{"pg=postgres://u@h/db?sslmode=disable", "m=mysql://u@h/db", "n=mariadb://u@h/db?x=1"}
	got := withMySQLParams(specs, "a=b")
	want := []string{"pg=postgres://u@h/db?sslmode=disable", "m=mysql://u@h/db?a=b", "n=mariadb://u@h/db?x=1&a=b"}
	if !slices.Equal(got, want) {
		t.Errorf("withMySQLParams = %v, want %v", got, want)
	}
}

func TestMedianCell(t *testing.T) {
	cells := []benchCell{
		{Protocol: "3pc", Participants: 2, Concurrency: 1, Seconds: 1, Committed: 10, TxPerSec: 300, P50Ms: 3, P99Ms: 9, AllocsPerTx: 200},
		{Protocol: "3pc", Participants: 2, Concurrency: 1, Seconds: 1, Committed: 20, TxPerSec: 100, P50Ms: 1, P99Ms: 7, AllocsPerTx: 220},
		{Protocol: "2pc", Participants: 2, Concurrency: 1, Seconds: 1, Committed: 99, TxPerSec: 999, P50Ms: 9},
		{Protocol: "3pc", Participants: 2, Concurrency: 1, Seconds: 1, Committed: 30, TxPerSec: 200, P50Ms: 2, P99Ms: 8, AllocsPerTx: 210, Aborted: 1},
		{Protocol: "3pc", Participants: 2, Concurrency: 16, Seconds: 1, Committed: 99, TxPerSec: 999},
	}
	got := medianCell(cells, "3pc", 2, 1)
	want := benchCell{Protocol: "3pc", Participants: 2, Concurrency: 1, Seconds: 3, Committed: 60, Aborted: 1,
		TxPerSec: 200, P50Ms: 2, P99Ms: 8, AllocsPerTx: 210}
	if got != want {
		t.Errorf("medianCell = %+v\nwant %+v", got, want)
	}
	if got := medianCell(cells[:2], "3pc", 2, 1); got.TxPerSec != 200 || got.P50Ms != 2 {
		t.Errorf("median of two = %v tx/s, p50 %v ms; want the means 200, 2", got.TxPerSec, got.P50Ms)
	}
}

func TestStealPercent(t *testing.T) {
	if p := stealPercent(cpuTimes{total: 100, steal: 10}, cpuTimes{total: 300, steal: 60}, true); p == nil || *p != 25 {
		t.Errorf("stealPercent: %v, want 25", p)
	}
	if p := stealPercent(cpuTimes{total: 100}, cpuTimes{total: 100}, true); p != nil {
		t.Errorf("no time passed: %v, want nil", *p)
	}
	if runtime.GOOS == "linux" {
		if c, ok := readCPUTimes(); !ok || c.total == 0 || c.steal > c.total {
			t.Errorf("readCPUTimes on Linux: %+v, %v", c, ok)
		}
	}
}
