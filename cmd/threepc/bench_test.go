package main

import (
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
