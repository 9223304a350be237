package main

import (
	"slices"
	"strings"
	"testing"
)

func TestParseBenchVariant(t *testing.T) {
	v, err := parseBenchVariant("3pc+ro+llr+async")
	if err != nil {
		t.Fatal(err)
	}
	if v.base != "3pc" || len(v.opts) != 2 || v.mysqlParams != "threepc_read_only_vote=true" {
		t.Errorf("variant = %+v", v)
	}
	// attached is gone: MySQL branches always commit on their session.
	if v, err := parseBenchVariant("2pc+llr"); err != nil || v.mysqlParams != "" {
		t.Errorf("2pc+llr = %+v, %v; want the MySQL driver's defaults", v, err)
	}
	for _, bad := range []string{"3pc+", "local+llr", "handwritten2pc+ro", "3pc+turbo", "4pc", "3pc+attached", "2pc+llr+attached"} {
		if _, err := parseBenchVariant(bad); err == nil {
			t.Errorf("parseBenchVariant(%q): no error", bad)
		}
	}
	// noro is the default now: refused with a message saying so.
	if _, err := parseBenchVariant("3pc+llr+noro"); err == nil || !strings.Contains(err.Error(), "default") {
		t.Errorf("3pc+llr+noro: %v, want an error saying the vote is off by default", err)
	}
	specs := []string{"pg=postgres://u@h/db?sslmode=disable", "m=mysql://u@h/db", "n=mariadb://u@h/db?x=1"}
	got := withMySQLParams(specs, "a=b")
	want := []string{"pg=postgres://u@h/db?sslmode=disable", "m=mysql://u@h/db?a=b", "n=mariadb://u@h/db?x=1&a=b"}
	if !slices.Equal(got, want) {
		t.Errorf("withMySQLParams = %v, want %v", got, want)
	}
}
