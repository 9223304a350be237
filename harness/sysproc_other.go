//go:build !linux

package harness

import (
	"fmt"
	"syscall"
)

// sysProcAttr puts the server in its own process group and drops root
// privileges. Without Linux's parent-death signal a server can outlive a
// test binary that is killed; Main and Close stop it otherwise.
func (s *Server) sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		Setpgid:    true,
		Credential: s.cred,
	}
}

// removeSysVSegment is a no-op off Linux: the leftover segment stays until
// the machine restarts.
func removeSysVSegment(string) {}

// enterNetNS fails off Linux, which has no network namespaces.
func enterNetNS(ns string) error {
	return fmt.Errorf("harness: network namespace %s: only on Linux", ns)
}
