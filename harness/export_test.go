package harness

// BinariesMissing returns why the server programs of kind cannot be
// found (wrapping ErrBinariesMissing), or nil.
func BinariesMissing(kind Kind) error {
	_, err := findBinaries(kind)
	return err
}
