package main

import (
	"regexp"
	"testing"

	"github.com/spf13/cobra"
)

// TestHelpDefaults: no --help shows a sentinel default such as
// "(default -1ns)": a flag whose "not given" is a special value says what
// not giving it means instead.
func TestHelpDefaults(t *testing.T) {
	sentinel := regexp.MustCompile(`\(default -[0-9]`)
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if u := c.LocalFlags().FlagUsages(); sentinel.MatchString(u) {
			t.Errorf("threepc %s --help shows a sentinel default:\n%s", c.CommandPath(), u)
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	root := newRoot(&globals{})
	walk(root)
	bench, _, err := root.Find([]string{"bench"})
	if err != nil {
		t.Fatal(err)
	}
	if u := bench.LocalFlags().FlagUsages(); !regexp.MustCompile(`--warmup duration +unmeasured time before each cell \(default duration/5, at most 1s\)`).MatchString(u) {
		t.Errorf("bench --help does not say what --warmup defaults to:\n%s", u)
	}
}
