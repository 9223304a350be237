//go:build !threepc_seeded

package seeded

// Enabled reports whether this build can plant bugs.
const Enabled = false

// Switch is one planted bug; without the threepc_seeded tag it is always
// off and cannot be turned on.
type Switch struct{}

// Load reports false.
func (*Switch) Load() bool { return false }
