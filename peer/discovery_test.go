package peer

import (
	"context"
	"fmt"
	"github.com/shoal-mesh/shoal/internal/poll"
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

// refuser refuses every connection while closed, counting the inbound
// connections it refused.
type refuser struct {
	closed  atomic.Bool
	refused atomic.Int64
}

func (g *refuser) InterceptPeerDial(libp2ppeer.ID) bool               { return !g.closed.Load() }
func (g *refuser) InterceptAddrDial(libp2ppeer.ID, ma.Multiaddr) bool { return !g.closed.Load() }
func (g *refuser) InterceptAccept(network.ConnMultiaddrs) bool {
	if g.closed.Load() {
		g.refused.Add(1)
		return false
	}
	return true
}
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
	// The announcement's dial fails (waiting for more failures would
	// only lengthen the redial backoff this test then sits out).
	poll.Until(t, 20*time.Second, "a refused dial", poll.True(
		func() bool { return g.refused.Load() >= 1 },
		func() string { return fmt.Sprintf("%d refused", g.refused.Load()) }))
	if b.host.Network().Connectedness(a.host.ID()) == network.Connected {
		t.Fatal("connected through a gater that refuses everything")
	}
	g.closed.Store(false)
	// Connected, and counted as an mDNS discovery once the dial returns.
	poll.Until(t, 45*time.Second, "the LAN peer dialled again once it accepts connections", poll.True(
		func() bool {
			return b.host.Network().Connectedness(a.host.ID()) == network.Connected && b.discovered(sourceMDNS) > 0
		},
		func() string {
			return fmt.Sprintf("connectedness %v, mdns discoveries %d", b.host.Network().Connectedness(a.host.ID()), b.discovered(sourceMDNS))
		}))
}
