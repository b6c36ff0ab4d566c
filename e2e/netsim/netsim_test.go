package netsim

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/shoal-mesh/shoal/internal/poll"
)

func echoServer(t *testing.T, h *Host) string {
	t.Helper()
	var ln net.Listener
	if err := h.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", h.IP.String()+":7000")
		return err
	}); err != nil {
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
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					c.Write([]byte(line))
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func roundTrip(ctx context.Context, from *Host, addr string) (time.Duration, error) {
	c, err := from.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	start := time.Now()
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return 0, err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return 0, err
	}
	if strings.TrimSpace(line) != "ping" {
		return 0, err
	}
	return time.Since(start), nil
}

func TestSwitchDelayLossPartition(t *testing.T) {
	n := Require(t, "shoalnet-unit")
	a, err := n.AddHost(1)
	if err != nil {
		t.Fatal(err)
	}
	b, err := n.AddHost(2) // another site: unicast is routed
	if err != nil {
		t.Fatal(err)
	}
	c, err := n.AddHost(1)
	if err != nil {
		t.Fatal(err)
	}
	addr := echoServer(t, a)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := roundTrip(ctx, b, addr); err != nil {
		t.Fatalf("b→a across sites: %v", err)
	}

	// Delay: one write+read is one round trip after the handshake, so at
	// least two one-way delays.
	n.SetLink(Link{Delay: 50 * time.Millisecond})
	rtt, err := roundTrip(ctx, b, addr)
	if err != nil {
		t.Fatal(err)
	}
	if rtt < 100*time.Millisecond {
		t.Errorf("round trip %v with 50 ms one-way delay", rtt)
	}
	n.SetLink(Link{})

	// Partition: a and c cannot reach b, but still reach each other.
	n.Partition([]*Host{a, c}, []*Host{b})
	short, cancel2 := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel2()
	if _, err := roundTrip(short, b, addr); err == nil {
		t.Error("b reached a across a partition")
	}
	if _, err := roundTrip(ctx, c, addr); err != nil {
		t.Errorf("c→a inside one side: %v", err)
	}
	if n.Stats().DroppedCut == 0 {
		t.Error("no packet counted as cut")
	}
	n.Heal()
	if _, err := roundTrip(ctx, b, addr); err != nil {
		t.Errorf("after heal: %v", err)
	}

	// Loss: total loss drops everything and is counted.
	n.SetLink(Link{Loss: 1})
	before := n.Stats().DroppedLoss
	short3, cancel3 := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel3()
	if _, err := roundTrip(short3, c, addr); err == nil {
		t.Error("a packet crossed a link with 100 % loss")
	}
	if n.Stats().DroppedLoss == before {
		t.Error("no packet counted as lost")
	}
	n.SetLink(Link{})
}

// TestUplinkRate: a capped uplink delivers no faster than its rate, and
// lifting the cap lets the same transfer through at once.
func TestUplinkRate(t *testing.T) {
	n := Require(t, "shoalnet-rate")
	a, err := n.AddHost(1)
	if err != nil {
		t.Fatal(err)
	}
	b, err := n.AddHost(1)
	if err != nil {
		t.Fatal(err)
	}
	addr := echoServer(t, a)
	send := func() time.Duration {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := b.DialContext(ctx, "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		line := strings.Repeat("x", 64<<10-1) + "\n"
		start := time.Now()
		go func() {
			for range 8 { // 512 KiB, echoed back
				c.Write([]byte(line))
			}
		}()
		r := bufio.NewReaderSize(c, 128<<10)
		for range 8 {
			if _, err := r.ReadString('\n'); err != nil {
				t.Fatal(err)
			}
		}
		return time.Since(start)
	}
	n.SetLink(Link{Rate: 1 << 20})
	// 512 KiB out of b and back out of a, each uplink at 1 MiB/s: the
	// echo cannot finish before half a second (headers make it longer).
	if took := send(); took < 500*time.Millisecond {
		t.Errorf("512 KiB echoed in %v through 1 MiB/s uplinks", took)
	}
	n.SetLink(Link{})
	if took := send(); took > 500*time.Millisecond {
		t.Logf("512 KiB echoed in %v without a cap", took) // informational: the machine may be loaded
	}
}

func TestMulticastStaysInSite(t *testing.T) {
	n := Require(t, "shoalnet-mcast")
	a, _ := n.AddHost(1)
	b, _ := n.AddHost(1)
	c, _ := n.AddHost(2)
	if a == nil || b == nil || c == nil {
		t.Fatal("AddHost failed")
	}
	group := &net.UDPAddr{IP: net.IPv4(224, 0, 0, 251), Port: 5353}
	listen := func(h *Host) *net.UDPConn {
		var conn *net.UDPConn
		if err := h.Do(func() error {
			ifi, err := net.InterfaceByName(ifName)
			if err != nil {
				return err
			}
			conn, err = net.ListenMulticastUDP("udp4", ifi, group)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	lb, lc := listen(b), listen(c)
	var sender *net.UDPConn
	if err := a.Do(func() error {
		var err error
		sender, err = net.DialUDP("udp4", &net.UDPAddr{IP: a.IP.AsSlice()}, group)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer sender.Close()
	buf := make([]byte, 64)
	// A datagram may be lost on the way (UDP): send again until one
	// arrives, each wait for it bounded at 100 ms.
	poll.Until(t, 5*time.Second, "multicast reaches a host of the same site", func() error {
		sender.Write([]byte("hello"))
		lb.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		k, _, err := lb.ReadFromUDP(buf)
		if err != nil {
			return err
		}
		if string(buf[:k]) != "hello" {
			return fmt.Errorf("received %q", buf[:k])
		}
		return nil
	})
	// The observation window in which nothing may arrive: the tested
	// behaviour, not synchronisation.
	lc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, _, err := lc.ReadFromUDP(buf); err == nil {
		t.Error("multicast crossed into another site")
	}
}
