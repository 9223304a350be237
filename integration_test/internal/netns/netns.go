// Package netns makes network namespaces for partition tests: each is
// joined to the test's own (root) namespace by a veth pair with private
// addresses (10.203.B.1 on the host side, 10.203.B.2 inside), so that a
// server started inside (harness.Options.NetNS) is reached over a real
// kernel route. Cut makes that route drop every packet in both
// directions, silently: no reset, no ICMP error, no refused connection,
// as a lost route or a dead switch would; Restore brings it back, and
// TCP connections that survived the cut carry on.
//
// How the drop is made: the namespace's end of the pair is set down. The
// host's end then loses its carrier and the kernel discards whatever is
// sent into it; its route stays (ignore_routes_with_linkdown is off,
// which New checks), so nothing takes the default route off the
// machine, and the neighbour entries on the host side are permanent, so
// no failed ARP turns the drop into "host unreachable". A prohibit route
// of lower priority is a second guard: should the link's route ever be
// ignored, packets meet an error instead of leaving the machine.
//
// Needs root and the ip command (iproute2). Available says whether both
// are there.
package netns

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// namePrefix starts every namespace this package makes; the pid of the
// creating process follows, so that stale ones can be told apart.
const namePrefix = "threepc-"

// Link is one network namespace and the veth pair that joins it to the
// root namespace. Its methods are safe for concurrent use.
type Link struct {
	// Name is the namespace's name (`ip netns`); harness.Options.NetNS
	// takes it.
	Name string
	// HostAddr is the root namespace's end of the pair, NSAddr the
	// namespace's: the address a server inside listens on.
	HostAddr, NSAddr string

	block          int
	hostIf, nsIf   string
	hostMAC, nsMAC string
	release        func()

	mu     sync.Mutex
	cut    bool
	closed bool
}

var availOnce = sync.OnceValue(check)

// Available reports why partition tests cannot run here, or nil: they
// need root, the ip command and a kernel that makes namespaces and veth
// pairs.
func Available() error { return availOnce() }

func check() error {
	if os.Geteuid() != 0 {
		return errors.New("netns: network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("netns: the ip command (iproute2) is missing: %w", err)
	}
	l, err := New()
	if err != nil {
		return err
	}
	return l.Close()
}

// New makes a namespace with a veth pair to the root namespace, both ends
// up, addressed from a /30 block of 10.203.0.0/16 that no other Link on
// the machine holds. The caller must Close it.
func New() (*Link, error) {
	removeStale()
	block, release, err := reserveBlock()
	if err != nil {
		return nil, err
	}
	pid := os.Getpid()
	l := &Link{
		Name:     fmt.Sprintf("%s%d-%d", namePrefix, pid, block),
		HostAddr: fmt.Sprintf("10.203.%d.1", block),
		NSAddr:   fmt.Sprintf("10.203.%d.2", block),
		block:    block,
		// Interface names are at most 15 bytes: "tp255h4194304".
		hostIf:  fmt.Sprintf("tp%dh%d", block, pid),
		nsIf:    fmt.Sprintf("tp%dn%d", block, pid),
		hostMAC: fmt.Sprintf("02:74:70:%02x:00:01", block),
		nsMAC:   fmt.Sprintf("02:74:70:%02x:00:02", block),
		release: release,
	}
	if err := l.setUp(); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

func (l *Link) setUp() error {
	prefix := fmt.Sprintf("10.203.%d.0/30", l.block)
	steps := [][]string{
		{"netns", "add", l.Name},
		{"link", "add", l.hostIf, "address", l.hostMAC, "type", "veth", "peer", "name", l.nsIf, "address", l.nsMAC, "netns", l.Name},
		{"addr", "add", l.HostAddr + "/30", "dev", l.hostIf},
		{"link", "set", l.hostIf, "up"},
		{"-n", l.Name, "addr", "add", l.NSAddr + "/30", "dev", l.nsIf},
		{"-n", l.Name, "link", "set", "lo", "up"},
		{"-n", l.Name, "link", "set", l.nsIf, "up"},
		// Permanent: a carrier loss keeps them, so a cut never ends in a
		// failed ARP resolution, which would report "host unreachable".
		{"neigh", "replace", l.NSAddr, "lladdr", l.nsMAC, "dev", l.hostIf, "nud", "permanent"},
		{"-n", l.Name, "neigh", "replace", l.HostAddr, "lladdr", l.hostMAC, "dev", l.nsIf, "nud", "permanent"},
		// The guard: taken only if the link's own route is ignored.
		{"route", "add", "prohibit", prefix, "metric", "4000000000"},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return err
		}
	}
	for _, f := range []string{"all", l.hostIf} {
		b, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + f + "/ignore_routes_with_linkdown")
		if err == nil && strings.TrimSpace(string(b)) != "0" {
			return fmt.Errorf("netns: net.ipv4.conf.%s.ignore_routes_with_linkdown is %s: a cut link's route would be ignored and its packets refused instead of dropped", f, strings.TrimSpace(string(b)))
		}
	}
	return l.checkRoute()
}

// checkRoute makes sure the root namespace sends NSAddr into the pair,
// whatever the state of the link: never off the machine.
func (l *Link) checkRoute() error {
	out, err := exec.Command("ip", "-4", "route", "get", l.NSAddr).CombinedOutput()
	if err != nil {
		return fmt.Errorf("netns: ip route get %s: %v: %s", l.NSAddr, err, out)
	}
	if !strings.Contains(string(out), " dev "+l.hostIf+" ") {
		return fmt.Errorf("netns: %s is not routed into %s: %s", l.NSAddr, l.hostIf, strings.TrimSpace(string(out)))
	}
	return nil
}

// Cut drops every packet between the namespace and the root namespace,
// in both directions, until Restore. Connections are not told: their
// packets vanish.
func (l *Link) Cut() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("netns: cut of a closed link")
	}
	if err := ip("-n", l.Name, "link", "set", l.nsIf, "down"); err != nil {
		return err
	}
	l.cut = true
	return l.checkRoute()
}

// Restore ends a Cut. Packets that TCP retransmits arrive from now on, at
// the pace of each connection's retransmission back-off.
func (l *Link) Restore() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("netns: restore of a closed link")
	}
	if err := ip("-n", l.Name, "link", "set", l.nsIf, "up"); err != nil {
		return err
	}
	// Setting a link down flushes its neighbour entries, permanent ones
	// too: put the namespace's back.
	if err := ip("-n", l.Name, "neigh", "replace", l.HostAddr, "lladdr", l.hostMAC, "dev", l.nsIf, "nud", "permanent"); err != nil {
		return err
	}
	l.cut = false
	return nil
}

// IsCut reports whether the link is cut.
func (l *Link) IsCut() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cut
}

// Close deletes the namespace (and with it the veth pair) and the guard
// route. Processes still running inside keep the namespace alive until
// they exit, cut off from everything. It is idempotent.
func (l *Link) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	err := ip("netns", "delete", l.Name)
	_ = ip("link", "delete", l.hostIf) // gone with the namespace, unless that failed
	if rerr := ip("route", "delete", "prohibit", fmt.Sprintf("10.203.%d.0/30", l.block), "metric", "4000000000"); rerr != nil && err == nil && !strings.Contains(rerr.Error(), "No such process") {
		err = rerr
	}
	l.release()
	return err
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("netns: ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// lockDir holds one flock(2) lock file per address block in use, so that
// test binaries running at once never share one; a lock ends with its
// process, however it dies.
func lockDir() string { return filepath.Join(os.TempDir(), "threepc-netns") }

// reserveBlock takes the lock of a free block in 1..254 and returns its
// release.
func reserveBlock() (int, func(), error) {
	dir := lockDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, nil, fmt.Errorf("netns: %w", err)
	}
	used := usedBlocks()
	for b := 1; b < 255; b++ {
		if used[b] {
			continue
		}
		f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(b)), os.O_RDONLY|os.O_CREATE, 0o644)
		if err != nil {
			return 0, nil, fmt.Errorf("netns: %w", err)
		}
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return b, func() { f.Close() }, nil
		}
		f.Close()
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return 0, nil, fmt.Errorf("netns: lock block %d: %w", b, err)
		}
	}
	return 0, nil, errors.New("netns: no free address block in 10.203.0.0/16")
}

// usedBlocks lists the 10.203.B.0 blocks the root namespace already has
// an address or a route in, whoever made them.
func usedBlocks() map[int]bool {
	used := map[int]bool{}
	for _, args := range [][]string{{"-4", "-o", "addr", "show"}, {"-4", "route", "show"}} {
		out, err := exec.Command("ip", args...).Output()
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(out)) {
			rest, ok := strings.CutPrefix(f, "10.203.")
			if !ok {
				continue
			}
			b, _, _ := strings.Cut(rest, ".")
			if n, err := strconv.Atoi(b); err == nil {
				used[n] = true
			}
		}
	}
	return used
}

// removeStale deletes namespaces of this package whose process is gone
// (a test binary killed before its Close), with their veth pairs and
// guard routes.
func removeStale() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		rest, ok := strings.CutPrefix(name, namePrefix)
		if !ok {
			continue
		}
		p, b, ok := strings.Cut(rest, "-")
		pid, err1 := strconv.Atoi(p)
		block, err2 := strconv.Atoi(b)
		if !ok || err1 != nil || err2 != nil || pid == os.Getpid() || syscall.Kill(pid, 0) == nil {
			continue
		}
		_ = ip("netns", "delete", name)
		_ = ip("link", "delete", fmt.Sprintf("tp%dh%d", block, pid))
		_ = ip("route", "delete", "prohibit", fmt.Sprintf("10.203.%d.0/30", block), "metric", "4000000000")
	}
}
