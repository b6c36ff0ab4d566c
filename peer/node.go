// Package peer assembles a Shoal peer: the libp2p host (TCP and QUIC with
// Noise), discovery (mDNS, bootstrap peers, addresses learned from
// heartbeats), the Badger store and bitswap, the replicated state, and the
// local HTTP API. Everything a peer does is reachable from Node; the
// packages it assembles know nothing of each other beyond the interfaces
// they consume.
package peer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	libp2ppeer "github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/p2p/discovery/mdns"
	noise "github.com/libp2p/go-libp2p/p2p/security/noise"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoal-mesh/shoal/crdt"
	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/store"
	"github.com/shoal-mesh/shoal/store/artifacts"
)

// Sentinel start-up errors.
var (
	// ErrAddrInUse: a listen address (API or libp2p) is taken.
	ErrAddrInUse = errors.New("address already in use")
)

// Node is a running Shoal peer.
type Node struct {
	cfg     Config
	log     *slog.Logger
	started time.Time

	store   *store.Store
	host    host.Host
	ps      *pubsub.PubSub
	blocks  *store.Blocks
	replica *crdt.Replica
	mdns    mdns.Service
	// lanPeers are the peers mDNS announced, with when it last did: the
	// redial loop keeps trying them, so one failed dial (two peers dialling
	// each other at the same instant fail both) does not leave a peer
	// alone on its LAN.
	lanMu    sync.Mutex
	lanPeers map[libp2ppeer.ID]lanPeer
	dht      *dht.IpfsDHT
	// infReady is set once n.inf is (heartbeats, which start earlier,
	// read the loaded sessions).
	infReady atomic.Bool
	// apiToken is Config.APIToken, replaced by Reload.
	apiToken atomic.Pointer[string]
	found    sync.Map // discovery source → *atomic.Uint64

	registry  *models.Registry
	artifacts *artifacts.Manager
	life      *lifecycle

	artifactBytesOut atomic.Uint64

	ortVersion string
	inf        *inferenceState
	rag        *ragState

	reg     *prometheus.Registry
	metrics *httpMetrics
	apiLn   net.Listener
	api     *http.Server

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

// New starts a peer. It returns once the peer is listening and has joined
// the mesh; discovery continues in the background. Close it to stop.
func New(ctx context.Context, cfg Config) (n *Node, err error) {
	cfg.fill()
	p, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	nctx, cancel := context.WithCancel(context.Background())
	n = &Node{cfg: cfg, log: cfg.Logger, started: time.Now(), ctx: nctx, cancel: cancel}
	defer func() {
		if err != nil {
			n.Close()
			n = nil
		}
	}()

	// The store first: a data dir held by another peer must fail before
	// this one takes any port.
	var encKey []byte
	if cfg.EncryptKeyFile != "" {
		if encKey, err = readEncryptionKey(cfg.EncryptKeyFile); err != nil {
			return n, err
		}
	}
	n.apiToken.Store(&cfg.APIToken)
	if n.store, err = store.Open(store.Config{Dir: cfg.DataDir, NoSync: cfg.NoSync, MinFree: cfg.MinFreeBytes, EncryptionKey: encKey, Logger: cfg.Logger}); err != nil {
		return n, err
	}
	if n.store.Unclean() {
		n.log.Warn("previous run did not shut down cleanly", "data", cfg.DataDir)
	}
	if n.apiLn, err = net.Listen("tcp", cfg.APIAddr); err != nil {
		return n, listenErr("API", cfg.APIAddr, err)
	}
	key, err := loadIdentity(cfg.DataDir)
	if err != nil {
		return n, err
	}
	opts := []libp2p.Option{
		libp2p.Identity(key),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.DefaultMuxers,
	}
	listen := p.listen
	if cfg.PSKFile != "" {
		psk, err := readPSK(cfg.PSKFile)
		if err != nil {
			return n, err
		}
		opts = append(opts, libp2p.PrivateNetwork(psk))
		listen = listen[:0:0]
		for _, a := range p.listen {
			if _, err := a.ValueForProtocol(ma.P_QUIC_V1); err == nil {
				continue
			}
			listen = append(listen, a)
		}
		if len(listen) == 0 {
			return n, fmt.Errorf("%w: a private network (--psk) needs a TCP listen address; QUIC cannot run under a PSK", ErrBadConfig)
		}
		if len(listen) < len(p.listen) {
			n.log.Info("private network: QUIC listen addresses dropped (QUIC cannot run under a PSK)")
		}
	} else {
		opts = append(opts, libp2p.Transport(quic.NewTransport))
	}
	opts = append(opts, libp2p.ListenAddrs(listen...))
	if cfg.NAT {
		opts = append(opts, libp2p.NATPortMap(), libp2p.EnableHolePunching(), libp2p.EnableNATService())
	}
	if cfg.RelayService {
		opts = append(opts, libp2p.EnableRelayService())
	}
	if cfg.Gater != nil {
		opts = append(opts, libp2p.ConnectionGater(cfg.Gater))
	}
	if n.host, err = libp2p.New(opts...); err != nil {
		return n, listenErr("libp2p", fmt.Sprint(cfg.ListenAddrs), err)
	}
	n.log = n.log.With("peer", n.host.ID().String())

	if n.ps, err = pubsub.NewGossipSub(nctx, n.host,
		pubsub.WithMessageSignaturePolicy(pubsub.StrictSign),
		pubsub.WithPeerOutboundQueueSize(256),
		pubsub.WithFloodPublish(true),
	); err != nil {
		return n, fmt.Errorf("start gossipsub: %w", err)
	}
	n.blocks = store.NewBlocks(nctx, n.host, n.store.Blockstore(), store.BlocksConfig{})
	if n.replica, err = crdt.Open(ctx, crdt.Config{
		Mesh: cfg.Mesh, Self: n.host.ID(), PubSub: n.ps,
		Datastore: n.store.Datastore(), DAG: n.blocks.DAG(),
		Local: n.blocks.Local(), Adder: n.blocks.Service(),
		Logger: n.log, Unclean: n.store.Unclean(),
		HeartbeatInterval: cfg.HeartbeatInterval, PeerTimeout: cfg.PeerTimeout,
		Addrs: n.shareableAddrs, Loaded: n.loadedRefs,
	}); err != nil {
		return n, err
	}

	pub, err := models.LoadOrCreatePublisherKey(cfg.DataDir)
	if err != nil {
		return n, fmt.Errorf("publisher key: %w", err)
	}
	var trusted []models.PublisherID
	for _, t := range cfg.Trusted {
		_, id, err := models.ParsePublisherID(t)
		if err != nil {
			return n, fmt.Errorf("%w: --trust: %v", ErrBadConfig, err)
		}
		trusted = append(trusted, id)
	}
	if n.registry, err = models.New(models.Config{Replica: n.replica, Publisher: pub, Trusted: trusted, Logger: n.log}); err != nil {
		return n, err
	}
	n.artifacts = artifacts.New(artifacts.Config{Datastore: n.store.Datastore(), Blocks: n.blocks, Space: n.store.CheckSpace, Logger: n.log})
	n.life = newLifecycle(n, cfg.KeepVersions)
	n.reg = prometheus.NewRegistry()
	n.metrics = registerMetrics(n.reg, n)
	n.artifacts.OnFetch(n.metrics.fetchSeconds.Observe)
	if err := n.initInference(); err != nil {
		return n, err
	}
	n.infReady.Store(true)
	changes := n.registry.Subscribe()
	flushes := n.replica.Subscribe("/shoal/cache/", 64)
	n.rag = n.initRAG()
	docs := n.rag.m.Subscribe()
	n.wg.Add(4)
	go func() { defer n.wg.Done(); n.rag.m.Run(nctx, docs) }()
	go func() { defer n.wg.Done(); n.registry.Run(nctx) }()
	go func() { defer n.wg.Done(); n.life.run(nctx, changes) }()
	go func() { defer n.wg.Done(); n.followFlushes(nctx, flushes) }()
	n.api = &http.Server{
		Handler:           n.routes(),
		ReadHeaderTimeout: cmp.Or(cfg.APIHeaderTimeout, 10*time.Second),
		ReadTimeout:       cmp.Or(cfg.APIReadTimeout, time.Minute),
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(n.log.Handler(), slog.LevelWarn),
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		if err := n.api.Serve(n.apiLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("API server stopped", "err", err)
		}
	}()

	if cfg.WarmRouting {
		n.host.SetStreamHandler(n.routeProtocol(), n.handleRouteStream)
	}
	if cfg.MDNS {
		n.mdns = mdns.NewMdnsService(n.host, "shoal-"+cfg.Mesh, mdnsNotifee{n})
		if err := n.mdns.Start(); err != nil {
			n.log.Warn("mDNS discovery unavailable", "err", err)
			n.mdns = nil
		}
	}
	n.wg.Add(1)
	go n.redialLoop(p.bootstrap)
	if cfg.DHT {
		if err := n.startDHT(nctx, p.bootstrap); err != nil {
			return n, err
		}
	}
	if cfg.DefaultModel != nil || cfg.DemoRAG != nil {
		n.wg.Add(1)
		go func() { defer n.wg.Done(); n.publishDefaults(nctx) }()
	}

	n.log.Info("peer started", "mesh", cfg.Mesh, "api", n.APIAddr(), "addrs", n.Addrs(), "data", cfg.DataDir)
	return n, nil
}

func listenErr(what, addr string, err error) error {
	if errors.Is(err, syscall.EADDRINUSE) || errorsContain(err, "address already in use") {
		return fmt.Errorf("%s listen on %s: %w", what, addr, ErrAddrInUse)
	}
	return fmt.Errorf("%s listen on %s: %w", what, addr, err)
}

// ID returns the peer's libp2p id.
func (n *Node) ID() libp2ppeer.ID { return n.host.ID() }

// Host returns the libp2p host.
func (n *Node) Host() host.Host { return n.host }

// Replica returns the replicated state.
func (n *Node) Replica() *crdt.Replica { return n.replica }

// Registry returns the model registry.
func (n *Node) Registry() *models.Registry { return n.registry }

// Artifacts returns the artifact manager.
func (n *Node) Artifacts() *artifacts.Manager { return n.artifacts }

// Blocks returns the block exchange.
func (n *Node) Blocks() *store.Blocks { return n.blocks }

// Handler is the HTTP API, for embedding the peer's API in another server
// or calling it in-process.
func (n *Node) Handler() http.Handler { return n.api.Handler }

// APIAddr returns the address the HTTP API listens on.
func (n *Node) APIAddr() string { return n.apiLn.Addr().String() }

// Addrs returns the peer's full multiaddrs (with /p2p/<id>).
func (n *Node) Addrs() []string {
	var out []string
	for _, a := range n.host.Addrs() {
		out = append(out, a.Encapsulate(ma.StringCast("/p2p/"+n.host.ID().String())).String())
	}
	return out
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
		for _, ai := range n.recentLANPeers() {
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

type lanPeer struct {
	ai   libp2ppeer.AddrInfo
	seen time.Time
}

// lanPeerTTL is how long a peer mDNS announced stays a redial candidate
// after its last announcement.
const lanPeerTTL = 10 * time.Minute

// recentLANPeers returns the peers mDNS announced within lanPeerTTL and
// forgets older ones.
func (n *Node) recentLANPeers() []libp2ppeer.AddrInfo {
	n.lanMu.Lock()
	defer n.lanMu.Unlock()
	var out []libp2ppeer.AddrInfo
	for id, p := range n.lanPeers {
		if time.Since(p.seen) > lanPeerTTL {
			delete(n.lanPeers, id)
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
	m.n.lanMu.Lock()
	if m.n.lanPeers == nil {
		m.n.lanPeers = map[libp2ppeer.ID]lanPeer{}
	}
	m.n.lanPeers[ai.ID] = lanPeer{ai: ai, seen: time.Now()}
	m.n.lanMu.Unlock()
	m.n.wg.Add(1)
	go func() {
		defer m.n.wg.Done()
		m.n.dial(ai, sourceMDNS)
	}()
}

// Close stops the peer: API, discovery, replication, exchange, host and
// finally the store, which is synced and closed so Badger opens cleanly
// next time.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		var errs []error
		if n.api != nil {
			// Finish in-flight requests, but a client that keeps a
			// connection busy must not hold the peer's shutdown hostage.
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := n.api.Shutdown(sctx); err != nil {
				n.log.Warn("API requests still running at shutdown; closing their connections", "err", err)
				n.api.Close()
			}
			cancel()
		} else if n.apiLn != nil {
			n.apiLn.Close()
		}
		if n.mdns != nil {
			n.mdns.Close()
		}
		n.cancel()
		if n.dht != nil {
			n.dht.Close()
		}
		if n.replica != nil {
			if err := n.replica.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close replica: %w", err))
			}
		}
		if n.blocks != nil {
			n.blocks.Close()
		}
		if n.host != nil {
			n.host.Close()
		}
		n.wg.Wait()
		n.closeInference()
		if n.store != nil {
			if err := n.store.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close store: %w", err))
			}
		}
		n.closeErr = errors.Join(errs...)
	})
	return n.closeErr
}
