package faultproxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// echo serves a line-echo server on loopback and returns its address.
func echo(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func dial(t *testing.T, p *Proxy) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

// roundTrip sends line and waits up to d for its echo.
func roundTrip(c net.Conn, r *bufio.Reader, line string, d time.Duration) (string, error) {
	if _, err := c.Write([]byte(line + "\n")); err != nil {
		return "", err
	}
	_ = c.SetReadDeadline(time.Now().Add(d))
	defer c.SetReadDeadline(time.Time{})
	s, err := r.ReadString('\n')
	if len(s) > 0 {
		s = s[:len(s)-1]
	}
	return s, err
}

func TestStallHoldsThenDelivers(t *testing.T) {
	for _, d := range []Direction{ToServer, ToClient, Both} {
		t.Run(d.String(), func(t *testing.T) {
			p, err := New(echo(t))
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			c, r := dial(t, p)
			if s, err := roundTrip(c, r, "a", time.Second); err != nil || s != "a" {
				t.Fatalf("before the fault: %q, %v", s, err)
			}
			p.Stall(d)
			if _, err := roundTrip(c, r, "b", 200*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("stalled %s: got %v, want a read timeout (no reset, no answer)", d, err)
			}
			if n := p.Heal(); n != 0 {
				t.Fatalf("Heal after Stall reports %d bytes dropped", n)
			}
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			if s, err := r.ReadString('\n'); err != nil || s != "b\n" {
				t.Fatalf("after the heal, the held bytes: %q, %v", s, err)
			}
			if s, err := roundTrip(c, r, "c", time.Second); err != nil || s != "c" {
				t.Fatalf("after the heal: %q, %v", s, err)
			}
		})
	}
}

func TestBlackholeDropsThenResets(t *testing.T) {
	p, err := New(echo(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, r := dial(t, p)
	p.Blackhole(ToServer)
	if _, err := roundTrip(c, r, "lost", 200*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("blackholed: got %v, want a read timeout", err)
	}
	// A connection opened during the fault hangs too.
	c2, r2 := dial(t, p)
	if _, err := roundTrip(c2, r2, "lost too", 200*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("new connection, blackholed: got %v, want a read timeout", err)
	}
	if n := p.Heal(); n != int64(len("lost\nlost too\n")) {
		t.Fatalf("Heal reports %d bytes dropped", n)
	}
	if _, err := roundTrip(c, r, "x", time.Second); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a connection with a hole in its stream: got %v, want it reset", err)
	}
	c3, r3 := dial(t, p)
	if s, err := roundTrip(c3, r3, "fresh", time.Second); err != nil || s != "fresh" {
		t.Fatalf("new connection after the heal: %q, %v", s, err)
	}
}
