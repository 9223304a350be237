package harness

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ownerFile in a server directory holds the pid of the test binary that
// made it.
const ownerFile = "owner.pid"

// testUser is created when the process runs as root and none of the usual
// unprivileged users exist.
const testUser = "threepc-test"

// childPIDs lists the processes whose parent is pid.
func childPIDs(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range entries {
		c, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, _, ok := procStat(c); ok && ppid == pid {
			out = append(out, c)
		}
	}
	return out
}

// procStat reads the parent pid and state letter of pid from /proc.
func procStat(pid int) (ppid int, state byte, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, false
	}
	// The command name is in parentheses and may contain spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0, 0, false
	}
	ppid, err = strconv.Atoi(f[1])
	if err != nil {
		return 0, 0, false
	}
	return ppid, f[0][0], true
}

// pidAlive reports whether pid exists and is not a zombie (a zombie holds
// no port and no shared memory).
func pidAlive(pid int) bool {
	_, state, ok := procStat(pid)
	return ok && state != 'Z' && state != 'X'
}

var (
	credOnce sync.Map // Kind -> *credResult
)

type credResult struct {
	once sync.Once
	cred *syscall.Credential
	err  error
}

// serverCredential picks the OS user the server runs as: nil (the current
// user) unless we are root, because initdb and postgres refuse root and
// mariadbd would need --user, which drops privileges inside the server
// and with them the parent-death signal.
func serverCredential(kind Kind) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	v, _ := credOnce.LoadOrStore(kind, &credResult{})
	r := v.(*credResult)
	r.once.Do(func() { r.cred, r.err = lookupServerUser(kind) })
	return r.cred, r.err
}

func lookupServerUser(kind Kind) (*syscall.Credential, error) {
	names := []string{"postgres", "mysql", "nobody"}
	if kind == MariaDB {
		names = []string{"mysql", "postgres", "nobody"}
	}
	for _, n := range names {
		if c, ok := credentialOf(n); ok {
			return c, nil
		}
	}
	out, err := exec.Command("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", testUser).CombinedOutput()
	if c, ok := credentialOf(testUser); ok {
		return c, nil
	}
	return nil, fmt.Errorf("harness: running as root and no unprivileged user (postgres, mysql, nobody) found; useradd %s: %v %s", testUser, err, out)
}

func credentialOf(name string) (*syscall.Credential, bool) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, false
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil || uid == 0 {
		return nil, false
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, true
}

// findBinaries locates the server programs of kind.
func findBinaries(kind Kind) (binaries, error) {
	switch kind {
	case Postgres:
		var dirs []string
		if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
			dirs = append(dirs, strings.TrimSpace(string(out)))
		}
		// Debian keeps each major version's server programs in its own
		// directory; prefer the newest.
		matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
		sort.Slice(matches, func(i, j int) bool { return pgVersion(matches[i]) > pgVersion(matches[j]) })
		dirs = append(dirs, matches...)
		for _, d := range dirs {
			initdb, server := filepath.Join(d, "initdb"), filepath.Join(d, "postgres")
			if isExecutable(initdb) && isExecutable(server) {
				return binaries{initdb: initdb, server: server}, nil
			}
		}
		initdb, err1 := exec.LookPath("initdb")
		server, err2 := exec.LookPath("postgres")
		if err1 == nil && err2 == nil {
			return binaries{initdb: initdb, server: server}, nil
		}
		return binaries{}, fmt.Errorf("%w: PostgreSQL initdb and postgres not found (looked in pg_config --bindir, /usr/lib/postgresql/*/bin, PATH); install the Debian package postgresql", ErrBinariesMissing)
	case MariaDB:
		server := findProgram("mariadbd", "mysqld")
		initdb := findProgram("mariadb-install-db", "mysql_install_db")
		var missing []string
		if server == "" {
			missing = append(missing, "mariadbd")
		}
		if initdb == "" {
			missing = append(missing, "mariadb-install-db")
		}
		if len(missing) > 0 {
			return binaries{}, fmt.Errorf("%w: %s not found; install the Debian package mariadb-server", ErrBinariesMissing, strings.Join(missing, " and "))
		}
		return binaries{initdb: initdb, server: server}, nil
	}
	return binaries{}, fmt.Errorf("harness: unknown server kind %q", kind)
}

func pgVersion(dir string) float64 {
	v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(dir)), 64)
	return v
}

// findProgram looks in PATH and in the sbin directories, which a non-root
// PATH often lacks.
func findProgram(names ...string) string {
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
		for _, d := range []string{"/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin", "/sbin"} {
			if p := filepath.Join(d, n); isExecutable(p) {
				return p
			}
		}
	}
	return ""
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

// removeStaleDirs deletes server directories left by test binaries that
// died without Close (their servers died with them through Pdeathsig).
func removeStaleDirs(parent string) {
	dirs, _ := filepath.Glob(filepath.Join(parent, "threepc-harness-*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, ownerFile))
		if err != nil {
			// Being created right now, or not ours: only remove when old.
			if fi, serr := os.Stat(d); serr == nil && time.Since(fi.ModTime()) > time.Hour {
				os.RemoveAll(d)
			}
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid == os.Getpid() || pidAlive(pid) {
			continue
		}
		if serverPidAlive(d) {
			continue
		}
		removeSysVSegment(filepath.Join(d, "data"))
		os.RemoveAll(d)
	}
}

// serverPidAlive reports whether the pid file in a server directory names
// a live process.
func serverPidAlive(dir string) bool {
	for _, f := range []string{"data/postmaster.pid", "mariadbd.pid"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			continue
		}
		line, _, _ := strings.Cut(string(b), "\n")
		if pid, err := strconv.Atoi(strings.TrimSpace(line)); err == nil && pidAlive(pid) {
			return true
		}
	}
	return false
}

// makeSearchable makes sure the server user, uid, can reach dir. Test
// directories (t.TempDir) are 0700, so ancestors below os.TempDir that
// this process owns get the search bit for others; that exposes no file
// names. Other unreachable ancestors are an error naming Options.Dir.
func makeSearchable(dir string, uid uint32) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("harness: %w", err)
	}
	tmp, _ := filepath.Abs(os.TempDir())
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("harness: %w", err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if ok && fi.Mode().Perm()&0o001 == 0 && st.Uid != uid {
			inTmp := strings.HasPrefix(d, tmp+string(filepath.Separator))
			if !inTmp || int(st.Uid) != os.Geteuid() {
				return fmt.Errorf("harness: the server runs as uid %d, which cannot reach %s (mode %v); use an Options.Dir under %s", uid, d, fi.Mode().Perm(), tmp)
			}
			if err := os.Chmod(d, fi.Mode().Perm()|0o001); err != nil {
				return fmt.Errorf("harness: %w", err)
			}
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

var (
	parentOnce sync.Once
	parent     string
)

// defaultParent is where servers live without Options.Dir: /dev/shm when
// it is a roomy tmpfs, else os.TempDir(). Creating a data directory's
// thousand files costs about a second on a journaling disk under load and
// a tenth of that in memory; a process kill keeps tmpfs contents just as
// it keeps the page cache.
func defaultParent() string {
	parentOnce.Do(func() {
		parent = os.TempDir()
		const shm = "/dev/shm"
		var st syscall.Statfs_t
		if err := syscall.Statfs(shm, &st); err != nil || uint64(st.Bavail)*uint64(st.Bsize) < 2<<30 {
			return
		}
		fi, err := os.Stat(shm)
		if err != nil || !fi.IsDir() || fi.Mode().Perm()&0o003 != 0o003 {
			return // servers running as another user must reach it
		}
		probe, err := os.MkdirTemp(shm, "threepc-probe-")
		if err != nil {
			return
		}
		os.Remove(probe)
		parent = shm
	})
	return parent
}
