//go:build threepc_seeded

package seeded

import "sync/atomic"

// Enabled reports whether this build can plant bugs.
const Enabled = true

// Switch is one planted bug, off until a test stores true.
type Switch struct{ on atomic.Bool }

// Load reports whether the bug is planted.
func (s *Switch) Load() bool { return s.on.Load() }

// Store plants (true) or removes (false) the bug.
func (s *Switch) Store(on bool) { s.on.Store(on) }
