package peer

import (
	"context"
	"sync/atomic"
	"time"

	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/discovery"
	libp2ppeer "github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	drouting "github.com/libp2p/go-libp2p/p2p/discovery/routing"
)

// How a peer was found, the label values of shoal_discovered_peers_total.
const (
	sourceBootstrap = "bootstrap" // --bootstrap
	sourceMDNS      = "mdns"      // LAN multicast
	sourceHeartbeat = "heartbeat" // addresses another peer's heartbeat carried
	sourceDHT       = "dht"       // the mesh's rendezvous on its DHT
)

var discoverySources = []string{sourceBootstrap, sourceMDNS, sourceHeartbeat, sourceDHT}

func (n *Node) countDiscovered(source string) {
	c, _ := n.found.LoadOrStore(source, new(atomic.Uint64))
	c.(*atomic.Uint64).Add(1)
}

func (n *Node) discovered(source string) uint64 {
	if c, ok := n.found.Load(source); ok {
		return c.(*atomic.Uint64).Load()
	}
	return 0
}

// startDHT joins the mesh's own Kademlia DHT. Its protocol prefix keeps it
// apart from the public IPFS DHT and from other meshes; every gateway is a
// server (they are infrastructure, and AutoNAT's verdict on a private
// site network would make them all clients of nobody). The DHT's routing
// table fills from the bootstrap peers and every peer this one connects
// to; the rendezvous loop then advertises this peer under the mesh's
// name and dials whoever else did.
func (n *Node) startDHT(ctx context.Context, bootstrap []libp2ppeer.AddrInfo) error {
	kad, err := dht.New(n.host,
		dht.Mode(dht.ModeServer),
		dht.ProtocolPrefix(protocol.ID("/shoal/"+n.cfg.Mesh)),
		dht.BootstrapPeers(bootstrap...),
	)
	if err != nil {
		return err
	}
	n.dht = kad
	n.wg.Add(1)
	go n.rendezvousLoop(ctx)
	return nil
}

// Rendezvous timing: the first round soon after start, then backing off
// to rendezvousMax, so a new peer finds the mesh in seconds and a settled
// one costs one lookup every few minutes.
const (
	rendezvousFirst = 2 * time.Second
	rendezvousMax   = 5 * time.Minute
)

func (n *Node) rendezvousLoop(ctx context.Context) {
	defer n.wg.Done()
	disc := drouting.NewRoutingDiscovery(n.dht)
	ns := "shoal/" + n.cfg.Mesh
	wait := rendezvousFirst
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, rendezvousMax)
		if n.dht.RoutingTable().Size() == 0 {
			wait = rendezvousFirst // nobody to ask yet
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		if _, err := disc.Advertise(rctx, ns, discovery.TTL(3*rendezvousMax)); err != nil {
			n.log.Debug("rendezvous advertise", "err", err)
		}
		peers, err := disc.FindPeers(rctx, ns, discovery.Limit(128))
		if err != nil {
			n.log.Debug("rendezvous lookup", "err", err)
			cancel()
			continue
		}
		for ai := range peers {
			if ai.ID == n.host.ID() || len(ai.Addrs) == 0 {
				continue
			}
			n.wg.Add(1)
			go func() { defer n.wg.Done(); n.dial(ai, sourceDHT) }()
		}
		cancel()
	}
}
