package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

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

// removeSysVSegment frees the small System V shared memory segment of a
// PostgreSQL data directory whose postmaster was killed: PostgreSQL
// removes it on a clean shutdown or at the next start on the same
// directory, neither of which happens once Close deletes the directory.
// Line 7 of postmaster.pid holds "key shmid".
func removeSysVSegment(dataDir string) {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 7 {
		return
	}
	f := strings.Fields(lines[6])
	if len(f) != 2 {
		return
	}
	shmid, err := strconv.Atoi(f[1])
	if err != nil || shmid < 0 {
		return
	}
	const ipcRMID = 0
	_, _, _ = syscall.Syscall(syscall.SYS_SHMCTL, uintptr(shmid), ipcRMID, 0)
}

// enterNetNS moves the calling OS thread into the network namespace ns
// (a name or a path, see Options.NetNS). The caller has locked the
// thread and never unlocks it.
func enterNetNS(ns string) error {
	path := netNSPath(ns)
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("harness: network namespace: %w", err)
	}
	defer f.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("harness: enter network namespace %s: %w", path, err)
	}
	return nil
}
