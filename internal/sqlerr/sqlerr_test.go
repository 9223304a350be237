package sqlerr

import (
	"errors"
	"testing"
)

func TestRowCarriesError(t *testing.T) {
	want := errors.New("boom")
	row := Row(want)
	var x int
	if err := row.Scan(&x); !errors.Is(err, want) {
		t.Fatalf("Scan: got %v, want %v", err, want)
	}
	if err := row.Err(); !errors.Is(err, want) {
		t.Fatalf("Err: got %v, want %v", err, want)
	}
}
