package harness

import "syscall"

// sysProcAttr puts the server in its own process group (so Kill reaches
// it whole and a terminal's signals do not), kills it when the test binary
// dies and drops root privileges. Go applies Pdeathsig after the
// credential change, which would otherwise clear it.
func (s *Server) sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		Setpgid:    true,
		Pdeathsig:  syscall.SIGKILL,
		Credential: s.cred,
	}
}
