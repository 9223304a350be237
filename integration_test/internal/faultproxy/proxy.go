// Package faultproxy is a TCP proxy for tests that injects network faults
// on demand. Cut resets every connection through it, as a load balancer
// reset would: the client and the server each see their socket close,
// mid-statement or between statements. Stall and Blackhole make the
// connections hang instead, in one direction or both, with no reset: the
// bytes are held (Stall: delivered when the fault heals, as TCP would
// retransmit them after a partition that heals in time) or dropped
// (Blackhole). Neither side's socket reports anything, so only the
// client's own timeouts end a wait.
package faultproxy

import (
	"errors"
	"fmt"
	"net"
	"sync"
)

// Direction selects which way bytes stop flowing.
type Direction int

// The directions of a hang. ToServer stops the client's requests, ToClient
// the server's answers (the request is executed, its answer never
// arrives), Both is a silent partition.
const (
	ToServer Direction = 1 << iota
	ToClient
	Both = ToServer | ToClient
)

func (d Direction) String() string {
	switch d {
	case ToServer:
		return "to-server"
	case ToClient:
		return "to-client"
	case Both:
		return "both"
	}
	return fmt.Sprintf("Direction(%d)", int(d))
}

// mode is what a pipe does with the bytes it reads.
type mode int

const (
	forward mode = iota
	hold         // keep them until the fault heals
	drop         // discard them
)

// Proxy forwards connections from a loopback listener to one target.
type Proxy struct {
	target string
	ln     net.Listener

	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	closed  bool
	cuts    int
	hangs   int
	modes   [2]mode // by direction: 0 to the server, 1 to the client
	healed  chan struct{}
	dropped int64 // bytes discarded by Blackhole
	wg      sync.WaitGroup
}

// New listens on 127.0.0.1:0 and forwards every accepted connection to
// target ("host:port"). Only loopback targets are accepted: tests must
// never reach another machine.
func New(target string) (*Proxy, error) {
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		return nil, fmt.Errorf("faultproxy: %w", err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("faultproxy: target %q is not a loopback address", target)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: %w", err)
	}
	p := &Proxy{target: target, ln: ln, conns: map[net.Conn]struct{}{}, healed: make(chan struct{})}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the proxy's "host:port", to put in a DSN instead of the
// server's.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		if !p.track(c, s) {
			c.Close()
			s.Close()
			return
		}
		p.wg.Add(2)
		go p.pipe(s, c, 0)
		go p.pipe(c, s, 1)
	}
}

func (p *Proxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
	return true
}

// pipe copies one direction (dir 0: to the server, 1: to the client),
// obeying the direction's mode for every chunk read; when either side
// ends, both sockets are closed so that the peer notices at once. A
// socket that ends while a chunk is held is closed only after the chunk
// has been delivered at the heal: the peer's kernel would go on
// retransmitting it.
func (p *Proxy) pipe(dst, src net.Conn, dir int) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.deliver(dst, buf[:n], dir) {
			break
		}
		if err != nil {
			break
		}
	}
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
	dst.Close()
	src.Close()
}

// deliver writes chunk to dst according to dir's mode, waiting while the
// mode is hold. It reports whether the pipe should go on.
func (p *Proxy) deliver(dst net.Conn, chunk []byte, dir int) bool {
	for {
		p.mu.Lock()
		m, healed, closed := p.modes[dir], p.healed, p.closed
		if m == drop {
			p.dropped += int64(len(chunk))
		}
		p.mu.Unlock()
		switch {
		case closed:
			return false
		case m == drop:
			return true
		case m == hold:
			<-healed
			continue
		}
		_, err := dst.Write(chunk)
		return err == nil
	}
}

// Stall makes every connection through the proxy, open or opened later,
// stop forwarding in d: bytes read are held, unanswered, until Heal
// delivers them. Nothing is reset.
func (p *Proxy) Stall(d Direction) { p.hang(d, hold) }

// Blackhole is Stall with the bytes discarded instead of held: after
// Heal, the connections that lost bytes are broken at the protocol level
// (a stream with a hole), so Heal resets them.
func (p *Proxy) Blackhole(d Direction) { p.hang(d, drop) }

func (p *Proxy) hang(d Direction, m mode) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hangs++
	if d&ToServer != 0 {
		p.modes[0] = m
	}
	if d&ToClient != 0 {
		p.modes[1] = m
	}
}

// Heal ends Stall and Blackhole: held bytes are delivered, late, and
// forwarding resumes. If any byte was dropped since the last Heal, every
// connection open is reset (Cut), since some of them have a hole in their
// stream. It reports how many bytes were dropped.
func (p *Proxy) Heal() int64 {
	p.mu.Lock()
	p.modes = [2]mode{}
	close(p.healed)
	p.healed = make(chan struct{})
	dropped := p.dropped
	p.dropped = 0
	p.mu.Unlock()
	if dropped > 0 {
		p.Cut()
	}
	return dropped
}

// Hangs reports how many times Stall or Blackhole ran.
func (p *Proxy) Hangs() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.hangs
}

// Cut closes every connection currently open through the proxy and
// returns how many sockets it closed. New connections are accepted as
// before.
func (p *Proxy) Cut() int {
	p.mu.Lock()
	cs := make([]net.Conn, 0, len(p.conns))
	for c := range p.conns {
		cs = append(cs, c)
	}
	p.conns = map[net.Conn]struct{}{}
	p.cuts++
	p.mu.Unlock()
	for _, c := range cs {
		if tc, ok := c.(*net.TCPConn); ok {
			// A reset rather than an orderly close: the peer gets
			// ECONNRESET mid-read, the harshest case for a driver.
			_ = tc.SetLinger(0)
		}
		c.Close()
	}
	return len(cs)
}

// Cuts reports how many times Cut ran.
func (p *Proxy) Cuts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cuts
}

// Close stops accepting, discards held bytes, cuts every connection and
// waits for the forwarding goroutines to end.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	close(p.healed) // held chunks are discarded: closed is set
	p.healed = make(chan struct{})
	p.mu.Unlock()
	err := p.ln.Close()
	p.Cut()
	p.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}
