package peer

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/network"
	libp2ppeer "github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// refuser refuses every connection while closed.
type refuser struct{ closed atomic.Bool }

func (g *refuser) InterceptPeerDial(libp2ppeer.ID) bool               { return !g.closed.Load() }
func (g *refuser) InterceptAddrDial(libp2ppeer.ID, ma.Multiaddr) bool { return !g.closed.Load() }
func (g *refuser) InterceptAccept(network.ConnMultiaddrs) bool        { return !g.closed.Load() }
func (g *refuser) InterceptSecured(network.Direction, libp2ppeer.ID, network.ConnMultiaddrs) bool {
	return !g.closed.Load()
}
func (g *refuser) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) {
	return !g.closed.Load(), 0
}

// TestLANPeerIsRedialedAfterAFailedDial: a peer mDNS announced once and
// whose first dial failed (in the field: two peers of a LAN dialling each
// other at the same instant, which fails both) is dialled again until it
// answers, instead of being left alone until mDNS happens to announce it
// again.
func TestLANPeerIsRedialedAfterAFailedDial(t *testing.T) {
	g := &refuser{}
	g.closed.Store(true)
	cfg := func(gater *refuser) Config {
		c := Config{DataDir: t.TempDir(), APIAddr: "127.0.0.1:0", ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"},
			Mesh: "lantest", NoSync: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
		if gater != nil {
			c.Gater = gater
		}
		return c
	}
	a, err := New(context.Background(), cfg(g))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := New(context.Background(), cfg(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	mdnsNotifee{b}.HandlePeerFound(libp2ppeer.AddrInfo{ID: a.host.ID(), Addrs: a.host.Addrs()})
	time.Sleep(1500 * time.Millisecond) // the announcement's dial, and a retry, fail
	if b.host.Network().Connectedness(a.host.ID()) == network.Connected {
		t.Fatal("connected through a gater that refuses everything")
	}
	g.closed.Store(false)
	deadline := time.Now().Add(20 * time.Second)
	// Connected, and counted as an mDNS discovery once the dial returns.
	for b.host.Network().Connectedness(a.host.ID()) != network.Connected || b.discovered(sourceMDNS) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the LAN peer was not dialled again once it accepted connections (connectedness %v, mdns discoveries %d)",
				b.host.Network().Connectedness(a.host.ID()), b.discovered(sourceMDNS))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
