package peer

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/discovery"
	"github.com/libp2p/go-libp2p/core/network"
	libp2ppeer "github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/discovery/mdns"
	drouting "github.com/libp2p/go-libp2p/p2p/discovery/routing"
	ma "github.com/multiformats/go-multiaddr"
)

// startDiscovery finds the mesh: mDNS on the LAN, the bootstrap peers and
// heartbeat addresses (redialled while disconnected), the mesh's DHT.
func (n *Node) startDiscovery(p parsed) error {
	if n.cfg.MDNS {
		n.mdns = mdns.NewMdnsService(n.host, "shoal-"+n.cfg.Mesh, mdnsNotifee{n})
		if err := n.mdns.Start(); err != nil {
			n.log.Warn("mDNS discovery unavailable", "err", err)
			n.mdns = nil
		}
	}
	n.wg.Add(1)
	go n.redialLoop(p.bootstrap)
	if n.cfg.DHT {
		return n.startDHT(n.ctx, p.bootstrap)
	}
	return nil
}

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

// shareableAddrs are announced in heartbeats so mesh peers can dial each
// other directly rather than only through whoever they bootstrapped from.
func (n *Node) shareableAddrs() []string {
	var out []string
	for _, a := range n.host.Addrs() {
		out = append(out, a.String())
	}
	return out
}

// redialLoop keeps bootstrap peers connected and dials the peers mDNS
// announced and mesh peers learned from heartbeats that this peer is not
// connected to, so every peer of a mesh ends up connected to every other
// (bitswap fetches only from connected peers). Failed dials back off per
// peer, with jitter (two peers retrying each other in lockstep would
// collide again), up to 30s.
func (n *Node) redialLoop(bootstrap []libp2ppeer.AddrInfo) {
	defer n.wg.Done()
	for _, ai := range bootstrap {
		n.host.ConnManager().Protect(ai.ID, "bootstrap")
	}
	type backoff struct {
		next  time.Time
		delay time.Duration
	}
	var mu sync.Mutex
	backoffs := map[libp2ppeer.ID]*backoff{}
	inflight := map[libp2ppeer.ID]bool{}
	try := func(ai libp2ppeer.AddrInfo, source string) {
		if ai.ID == n.host.ID() || n.host.Network().Connectedness(ai.ID) == network.Connected {
			return
		}
		mu.Lock()
		b := backoffs[ai.ID]
		if inflight[ai.ID] || (b != nil && time.Now().Before(b.next)) {
			mu.Unlock()
			return
		}
		inflight[ai.ID] = true
		mu.Unlock()
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			err := n.dial(ai, source)
			mu.Lock()
			defer mu.Unlock()
			delete(inflight, ai.ID)
			if err == nil {
				delete(backoffs, ai.ID)
				return
			}
			b := backoffs[ai.ID]
			if b != nil {
				b.delay = min(2*b.delay, 30*time.Second)
			} else {
				b = &backoff{delay: time.Second}
				backoffs[ai.ID] = b
			}
			b.next = time.Now().Add(b.delay/2 + rand.N(b.delay))
		}()
	}
	t := time.NewTicker(n.cfg.RedialInterval)
	defer t.Stop()
	for {
		for _, ai := range bootstrap {
			try(ai, sourceBootstrap)
		}
		for _, ai := range n.lan.recent() {
			try(ai, sourceMDNS)
		}
		for _, ps := range n.replica.Staleness().Peers {
			id, err := libp2ppeer.Decode(ps.ID)
			if err != nil {
				continue
			}
			var addrs []ma.Multiaddr
			for _, s := range ps.Addrs {
				if a, err := ma.NewMultiaddr(s); err == nil {
					addrs = append(addrs, a)
				}
			}
			try(libp2ppeer.AddrInfo{ID: id, Addrs: addrs}, sourceHeartbeat)
		}
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// dial connects to a peer found by source (sourceMDNS, …) and counts the
// connection under that source when it is new.
func (n *Node) dial(ai libp2ppeer.AddrInfo, source string) error {
	if ai.ID == n.host.ID() || n.host.Network().Connectedness(ai.ID) == network.Connected {
		return nil
	}
	n.host.Peerstore().AddAddrs(ai.ID, ai.Addrs, peerstore.TempAddrTTL)
	ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
	defer cancel()
	err := n.host.Connect(ctx, ai)
	if err != nil && n.ctx.Err() == nil {
		n.log.Debug("dial failed", "to", ai.ID.String(), "source", source, "err", err)
	}
	if err == nil {
		n.countDiscovered(source)
		n.log.Debug("connected", "to", ai.ID.String(), "source", source)
	}
	return err
}

// lanPeers are the peers mDNS announced, with when it last did: the
// redial loop keeps trying them, so one failed dial (two peers dialling
// each other at the same instant fail both) does not leave a peer alone
// on its LAN.
type lanPeers struct {
	mu    sync.Mutex
	peers map[libp2ppeer.ID]lanPeer
}

type lanPeer struct {
	ai   libp2ppeer.AddrInfo
	seen time.Time
}

func (l *lanPeers) add(ai libp2ppeer.AddrInfo) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.peers == nil {
		l.peers = map[libp2ppeer.ID]lanPeer{}
	}
	l.peers[ai.ID] = lanPeer{ai: ai, seen: time.Now()}
}

// lanPeerTTL is how long a peer mDNS announced stays a redial candidate
// after its last announcement.
const lanPeerTTL = 10 * time.Minute

// recent returns the peers mDNS announced within lanPeerTTL and
// forgets older ones.
func (l *lanPeers) recent() []libp2ppeer.AddrInfo {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []libp2ppeer.AddrInfo
	for id, p := range l.peers {
		if time.Since(p.seen) > lanPeerTTL {
			delete(l.peers, id)
			continue
		}
		out = append(out, p.ai)
	}
	return out
}

type mdnsNotifee struct{ n *Node }

func (m mdnsNotifee) HandlePeerFound(ai libp2ppeer.AddrInfo) {
	if ai.ID == m.n.host.ID() {
		return
	}
	m.n.lan.add(ai)
	m.n.wg.Add(1)
	go func() {
		defer m.n.wg.Done()
		m.n.dial(ai, sourceMDNS)
	}()
}
