package main

import (
	"slices"
	"testing"
)

func TestParseBenchVariant(t *testing.T) {
	v, err := parseBenchVariant("3pc+noro+llr+async")
	if err != nil {
		t.Fatal(err)
	}
	if v.base != "3pc" || len(v.opts) != 2 || v.mysqlParams != "threepc_read_only_vote=false" {
		t.Errorf("variant = %+v", v)
	}
	// attached is gone: MySQL branches always commit on their session.
	for _, bad := range []string{"3pc+", "local+llr", "handwritten2pc+noro", "3pc+turbo", "4pc", "3pc+attached", "2pc+llr+attached"} {
		if _, err := parseBenchVariant(bad); err == nil {
			t.Errorf("parseBenchVariant(%q): no error", bad)
		}
	}
	specs := []string{"pg=postgres://u@h/db?sslmode=disable", "m=mysql://u@h/db", "n=mariadb://u@h/db?x=1"}
	got := withMySQLParams(specs, "a=b")
	want := []string{"pg=postgres://u@h/db?sslmode=disable", "m=mysql://u@h/db?a=b", "n=mariadb://u@h/db?x=1&a=b"}
	if !slices.Equal(got, want) {
		t.Errorf("withMySQLParams = %v, want %v", got, want)
	}
}
