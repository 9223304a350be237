package harness

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Servers listen on ports in [portLow, portHigh). The kernel hands out
// client ports from the ephemeral range (here 32768-60999), so a port
// picked there can be taken by any outgoing connection between the pick
// and the server's bind; below it only programs that bind a port by
// number compete. 30000-32767 is left out too: it is Kubernetes' NodePort
// range, which kube-proxy intercepts.
const (
	portLow  = 20000
	portHigh = 30000
)

// wellKnownPorts are service ports inside [portLow, portHigh) that a
// developer's machine may be running or expect free.
var wellKnownPorts = map[int]bool{
	25565: true, // Minecraft
	25672: true, // RabbitMQ inter-node
	26257: true, // CockroachDB
	26379: true, // Redis Sentinel
	27017: true, // MongoDB
	27018: true,
	27019: true,
	28015: true, // RethinkDB
	28017: true, // MongoDB HTTP
}

// maxPortAttempts bounds how often Start tries another port after the
// server found its port taken.
const maxPortAttempts = 5

// portPicker returns a port for a new server and a function that gives it
// up; Start takes it as a parameter so that tests can hand out a taken
// port first.
type portPicker func() (port int, release func(), err error)

// pickPort returns a random port in the harness range that no other
// harness process on the machine holds and that 127.0.0.1 can bind right
// now. The returned release ends the reservation.
func pickPort() (int, func(), error) {
	lo, hi := portRange()
	var last error
	for range 200 {
		p := lo + rand.IntN(hi-lo)
		if wellKnownPorts[p] {
			continue
		}
		release, ok := reservePort(p)
		if !ok {
			continue
		}
		if err := canBind(p); err != nil {
			release()
			last = err
			continue
		}
		return p, release, nil
	}
	return 0, nil, fmt.Errorf("harness: no free loopback port in %d-%d (last error: %v)", lo, hi-1, last)
}

// portRange is [portLow, portHigh), cut short where the kernel's
// ephemeral range reaches into it.
func portRange() (lo, hi int) {
	lo, hi = portLow, portHigh
	if eLo, eHi, ok := ephemeralRange(); ok && eLo < hi && eHi >= lo && eLo-lo >= 1000 {
		hi = eLo
	}
	return lo, hi
}

// ephemeralRange reads the kernel's range of client ports.
func ephemeralRange() (lo, hi int, ok bool) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0, false
	}
	lo, err1 := strconv.Atoi(f[0])
	hi, err2 := strconv.Atoi(f[1])
	return lo, hi, err1 == nil && err2 == nil
}

func canBind(port int) error {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return err
	}
	return l.Close()
}

// portLockDir holds one lock file per port in use by a harness server on
// this machine. A server keeps its port across Kill and Restart, when
// nothing listens on it; the lock keeps other test binaries from picking
// it meanwhile. Locks are flock(2) locks, so they end with the process
// that holds them, however it dies.
func portLockDir() string { return filepath.Join(os.TempDir(), "threepc-ports") }

// reservePort takes the lock of port. ok is false when another server
// holds it. Without a usable lock directory it reserves nothing and says
// ok: the bind check and the start's retries still apply.
func reservePort(port int) (release func(), ok bool) {
	noop := func() {}
	dir := portLockDir()
	if err := os.Mkdir(dir, 0o777); err == nil {
		// Test binaries of several users share it, as they share /tmp.
		_ = os.Chmod(dir, 0o777|os.ModeSticky)
	}
	// Read-only is enough for flock and works on another user's file.
	f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(port)), os.O_RDONLY|os.O_CREATE, 0o644)
	if err != nil {
		return noop, true
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if errors.Is(err, syscall.EWOULDBLOCK) {
		f.Close()
		return nil, false
	}
	if err != nil {
		f.Close()
		return noop, true
	}
	return func() { f.Close() }, true
}
