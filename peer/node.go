// Package peer assembles a Shoal peer: the Badger store, the libp2p host
// (TCP and QUIC with Noise) and its discovery (mDNS, bootstrap peers, the
// mesh's DHT, addresses learned from heartbeats), bitswap, the replicated
// state, the model registry, and the components built on them — the model
// lifecycle, the serving path, retrieval and the HTTP API — each from its
// own package, wired here and nowhere else.
//
// New is the one assembly point; Close takes everything down in reverse.
// Config (config.go) documents every setting with its default.
package peer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	dht "github.com/libp2p/go-libp2p-kad-dht"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	libp2ppeer "github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/discovery/mdns"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/shoal-mesh/shoal/crdt"
	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/crdt/sign"
	"github.com/shoal-mesh/shoal/grpcapi"
	"github.com/shoal-mesh/shoal/httpapi"
	"github.com/shoal-mesh/shoal/inference"
	"github.com/shoal-mesh/shoal/inference/resultcache"
	"github.com/shoal-mesh/shoal/lifecycle"
	"github.com/shoal-mesh/shoal/rag"
	"github.com/shoal-mesh/shoal/serving"
	"github.com/shoal-mesh/shoal/sessions"
	"github.com/shoal-mesh/shoal/store"
	"github.com/shoal-mesh/shoal/store/artifacts"
)

// ErrAddrInUse: a listen address (API or libp2p) is taken.
var ErrAddrInUse = errors.New("address already in use")

// Node is a running Shoal peer.
type Node struct {
	cfg     Config
	log     *slog.Logger
	started time.Time

	store   *store.Store
	host    host.Host
	wire    *wireBytes
	ps      *pubsub.PubSub
	blocks  *store.Blocks
	replica *crdt.Replica
	mdns    mdns.Service
	dht     *dht.IpfsDHT
	lan     lanPeers
	found   sync.Map // discovery source → *atomic.Uint64

	// pub is the peer's publisher key: it signs every record the peer
	// writes. trust is whose records the replica admits, the keys the
	// registry trusts too (Reload replaces both).
	pub       *models.Publisher
	trust     *sign.TrustSet
	registry  *models.Registry
	artifacts *artifacts.Manager

	// The inference side: engine is nil when onnxruntime is unavailable
	// (engineErr says why); cache is nil when the result cache is off.
	engine    *inference.Engine
	engineErr error
	pool      *inference.Pool
	cache     *resultcache.Cache
	// infReady is set once pool is (heartbeats, which start earlier, read
	// the loaded sessions).
	infReady atomic.Bool

	life    *lifecycle.Manager
	serving *serving.Server
	flushes *serving.Flushes
	rag     *rag.Service
	sess    *sessions.Service
	sessDB  *store.Expiring
	api     *httpapi.API
	grpc    *grpcapi.Server

	// apiToken is Config.APIToken, replaced by Reload.
	apiToken atomic.Pointer[string]
	reg      *prometheus.Registry
	apiLn    net.Listener
	grpcLn   net.Listener // nil: no gRPC API
	httpSrv  *http.Server

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

// New starts a peer. It returns once the peer is listening and has joined
// the mesh; discovery continues in the background. Close it to stop.
func New(ctx context.Context, cfg Config) (n *Node, err error) {
	cfg.applyDefaults()
	p, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	nctx, cancel := context.WithCancel(context.Background())
	n = &Node{cfg: cfg, log: cfg.Logger, started: time.Now(), ctx: nctx, cancel: cancel}
	n.apiToken.Store(&cfg.APIToken)
	defer func() {
		if err != nil {
			n.Close()
			n = nil
		}
	}()
	steps := []func() error{
		// The store first: a data dir held by another peer must fail
		// before this one takes any port.
		n.openStore,
		n.listenAPI,
		func() error { return n.startHost(p) },
		n.loadKeys,
		func() error { return n.startReplication(ctx) },
		n.openRegistry,
		n.openInference,
		n.assemble,
		n.serveAPI,
		func() error { return n.startDiscovery(p) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
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

func (n *Node) openStore() error {
	var encKey []byte
	if n.cfg.EncryptKeyFile != "" {
		var err error
		if encKey, err = readEncryptionKey(n.cfg.EncryptKeyFile); err != nil {
			return err
		}
	}
	s, err := store.Open(store.Config{Dir: n.cfg.DataDir, NoSync: n.cfg.NoSync, MinFree: n.cfg.MinFreeBytes, EncryptionKey: encKey, Logger: n.cfg.Logger})
	if err != nil {
		return err
	}
	n.store = s
	// Sessions churn: they live in a database of their own, under the
	// same encryption key, whose files are dropped once none is left.
	if n.sessDB, err = store.OpenExpiring(filepath.Join(n.cfg.DataDir, "sessions"), encKey); err != nil {
		return err
	}
	if s.Unclean() {
		n.log.Warn("previous run did not shut down cleanly", "data", n.cfg.DataDir)
	}
	return nil
}

func (n *Node) listenAPI() error {
	ln, err := net.Listen("tcp", n.cfg.APIAddr)
	if err != nil {
		return listenErr("API", n.cfg.APIAddr, err)
	}
	n.apiLn = ln
	if n.cfg.GRPCAddr == "" {
		return nil
	}
	if n.grpcLn, err = net.Listen("tcp", n.cfg.GRPCAddr); err != nil {
		return listenErr("gRPC", n.cfg.GRPCAddr, err)
	}
	return nil
}

// startReplication joins gossipsub and opens the replicated state.
func (n *Node) startReplication(ctx context.Context) error {
	var err error
	if n.ps, err = pubsub.NewGossipSub(n.ctx, n.host,
		pubsub.WithMessageSignaturePolicy(pubsub.StrictSign),
		pubsub.WithPeerOutboundQueueSize(256),
		pubsub.WithFloodPublish(true),
		crdt.PeerScoreOptions(n.cfg.Mesh),
	); err != nil {
		return fmt.Errorf("start gossipsub: %w", err)
	}
	n.blocks = store.NewBlocks(n.ctx, n.host, n.store.Blockstore(), store.BlocksConfig{})
	n.replica, err = crdt.Open(ctx, crdt.Config{
		Mesh: n.cfg.Mesh, Self: n.host.ID(), PubSub: n.ps,
		Datastore: n.store.Datastore(), Sync: n.store.Sync, DAG: n.blocks.DAG(),
		Local: n.blocks.Local(), Adder: n.blocks.Service(),
		Logger: n.log, Unclean: n.store.Unclean(),
		HeartbeatInterval: n.cfg.HeartbeatInterval, PeerTimeout: n.cfg.PeerTimeout,
		FoldAfter: n.cfg.FoldAfter, FoldPruneDelay: n.cfg.FoldPruneDelay, Pruned: n.store.Reclaim,
		Addrs: n.shareableAddrs, Loaded: n.loadedRefs,
		Signer: n.pub, Trust: n.trust,
	})
	return err
}

// loadKeys loads the publisher key (made on first start) and the trusted
// keys: the replica signs every record with the one and admits only
// records signed by it or the others, and the registry trusts the same.
func (n *Node) loadKeys() error {
	pub, err := models.LoadOrCreatePublisherKey(n.cfg.DataDir)
	if err != nil {
		return fmt.Errorf("publisher key: %w", err)
	}
	trusted, err := parseTrusted(n.cfg.Trusted)
	if err != nil {
		return err
	}
	n.pub, n.trust = pub, sign.NewTrustSet(append(trusted, pub.ID())...)
	return nil
}

func (n *Node) openRegistry() error {
	var err error
	if n.registry, err = models.New(models.Config{Replica: n.replica, Publisher: n.pub, Trusted: n.trust.IDs(), Logger: n.log}); err != nil {
		return err
	}
	acfg := artifacts.Config{Datastore: n.store.Datastore(), Blocks: n.blocks, Space: n.store.CheckSpace, Logger: n.log}
	if !n.cfg.NoArtifactSwarm {
		acfg.Host, acfg.Mesh = n.host, n.cfg.Mesh
	}
	n.artifacts = artifacts.New(acfg)
	return nil
}

func parseTrusted(keys []string) ([]models.PublisherID, error) {
	var ids []models.PublisherID
	for _, t := range keys {
		_, id, err := models.ParsePublisherID(t)
		if err != nil {
			return nil, fmt.Errorf("%w: --trust: %v", ErrBadConfig, err)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// openInference opens onnxruntime (a peer without it still replicates and
// serves everything else) and the result cache.
func (n *Node) openInference() error {
	n.pool = inference.NewPool()
	e, err := inference.Open(inference.Config{Library: n.cfg.ORTLibrary, Device: n.cfg.Device,
		IntraOpThreads: n.cfg.IntraOpThreads, Logger: n.log})
	switch {
	case errors.Is(err, inference.ErrNoCUDA):
		return fmt.Errorf("%w: --device cuda: %v", ErrBadConfig, err)
	case err != nil:
		n.engineErr = err
		n.log.Warn("onnxruntime unavailable: inference disabled", "err", err)
	default:
		n.engine = e
	}
	if n.cfg.CacheBytes > 0 {
		cc := resultcache.Config{MaxBytes: n.cfg.CacheBytes, TTL: n.cfg.CacheTTL}
		if n.cfg.CachePersist {
			cc.Store = n.store.Datastore()
		}
		n.cache = resultcache.New(cc)
	}
	n.infReady.Store(true)
	return nil
}

// assemble builds the components on the replicated state and starts them
// following it.
func (n *Node) assemble() error {
	var cacheDrop lifecycle.Cache
	if n.cache != nil {
		cacheDrop = n.cache
	}
	n.life = lifecycle.New(lifecycle.Config{Registry: n.registry, Artifacts: n.artifacts,
		Engine: n.engine, EngineErr: n.engineErr, Pool: n.pool, Cache: cacheDrop,
		Now: func() int64 { return n.replica.Clock().Peek().Wall }, Keep: n.cfg.KeepVersions, Logger: n.log})
	var router *serving.Router
	if n.cfg.WarmRouting {
		router = serving.NewRouter(n.host, n.cfg.Mesh, n.replica.Staleness, n.log)
	}
	n.serving = serving.New(serving.Config{Sessions: n.life, Cache: n.cache, MaxInflight: n.cfg.MaxInflight, Router: router, Logger: n.log})
	n.flushes = serving.NewFlushes(n.replica, n.cache, n.log)
	n.rag = rag.NewService(n.replica, n.life, n.log)
	if n.cfg.EncryptKeyFile == "" {
		// Saved graphs hold the vectors in the clear: with encryption at
		// rest they are built again at every start instead.
		n.rag.PersistIndexes(filepath.Join(n.cfg.DataDir, "index"), n.store.CheckSpace)
	}
	sess, err := sessions.New(sessions.Config{Mesh: n.cfg.Mesh, Site: n.cfg.Site, Host: n.host, PubSub: n.ps,
		Signer: n.pub, Trust: n.trust, Clock: n.replica.Clock(), DB: n.sessDB, MaxClockSkew: time.Minute,
		Logger: n.log.With("component", "sessions")})
	if err != nil {
		return err
	}
	n.sess = sess
	n.api = httpapi.New(httpapi.Config{Peer: nodeStatus{n}, Consistency: n.replica, Models: n.life,
		Inference: n.serving, Flusher: n.flushes, Retrieval: n.rag, Sessions: n.sess, Disk: n.store, Token: n.token,
		Version: n.cfg.Version, Logger: n.log, Metrics: n.metricsHandler()})
	n.grpc = grpcapi.New(grpcapi.Config{Consistency: n.replica, Models: n.life, Inference: n.serving,
		Version: n.cfg.Version, Logger: n.log})
	if router != nil {
		router.Serve(n.ctx, n.api.Handler())
	}
	if err := n.registerMetrics(); err != nil {
		return err
	}

	n.life.Start(n.registry.Subscribe())
	flushes := n.replica.Subscribe(serving.FlushPrefix, 64)
	docs := n.rag.Subscribe()
	n.wg.Add(3)
	go func() { defer n.wg.Done(); n.rag.Run(n.ctx, docs) }()
	go func() { defer n.wg.Done(); n.registry.Run(n.ctx) }()
	go func() { defer n.wg.Done(); n.followFlushes(flushes) }()
	return nil
}

// followFlushes applies cache flushes from sub until the peer closes. If
// the replica ends sub because Follow fell behind (crdt.ErrSlowSubscriber),
// it subscribes again and follows anew: Follow applies the flushes in the
// state before the events, which covers those the old subscription lost.
func (n *Node) followFlushes(sub *crdt.Subscription) {
	for {
		n.flushes.Follow(n.ctx, sub)
		if n.ctx.Err() != nil || !errors.Is(sub.Err(), crdt.ErrSlowSubscriber) {
			return
		}
		n.log.Warn("cache flushes fell behind the replicated state: reading them again", "err", sub.Err())
		sub = n.replica.Subscribe(serving.FlushPrefix, 64)
	}
}

func (n *Node) metricsHandler() http.Handler {
	n.reg = prometheus.NewRegistry()
	return promhttp.HandlerFor(n.reg, promhttp.HandlerOpts{Registry: n.reg})
}

func (n *Node) serveAPI() error {
	n.httpSrv = &http.Server{
		Handler:           n.api.Handler(),
		ReadHeaderTimeout: cmp.Or(n.cfg.APIHeaderTimeout, 10*time.Second),
		ReadTimeout:       cmp.Or(n.cfg.APIReadTimeout, time.Minute),
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(n.log.Handler(), slog.LevelWarn),
	}
	// Shutdown waits for active requests; watch streams never finish on
	// their own, so they are ended when it begins.
	n.httpSrv.RegisterOnShutdown(n.api.EndStreams)
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		if err := n.httpSrv.Serve(n.apiLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("API server stopped", "err", err)
		}
	}()
	if n.grpcLn != nil {
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			if err := n.grpc.Serve(n.grpcLn); err != nil {
				n.log.Error("gRPC server stopped", "err", err)
			}
		}()
	}
	return nil
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

// Sessions returns the conversation sessions, for in-process callers that
// skip the HTTP API.
func (n *Node) Sessions() *sessions.Service { return n.sess }

// Handler is the HTTP API, for embedding the peer's API in another server
// or calling it in-process.
func (n *Node) Handler() http.Handler { return n.api.Handler() }

// APIAddr returns the address the HTTP API listens on.
func (n *Node) APIAddr() string { return n.apiLn.Addr().String() }

// GRPCAddr returns the address the gRPC API listens on ("" when off).
func (n *Node) GRPCAddr() string {
	if n.grpcLn == nil {
		return ""
	}
	return n.grpcLn.Addr().String()
}

// Serving returns the version of model this peer serves, if any.
func (n *Node) Serving(model string) (string, bool) {
	s, ok := n.life.Serving(model)
	return s.Version, ok
}

// Addrs returns the peer's full multiaddrs (with /p2p/<id>).
func (n *Node) Addrs() []string {
	var out []string
	for _, a := range n.host.Addrs() {
		out = append(out, a.Encapsulate(ma.StringCast("/p2p/"+n.host.ID().String())).String())
	}
	return out
}

// loadedRefs is what this peer announces in its heartbeats: the versions
// it has loaded, when it accepts forwarded requests.
func (n *Node) loadedRefs() []string {
	// Heartbeats start before inference is set up.
	if !n.cfg.WarmRouting || !n.infReady.Load() {
		return nil
	}
	var out []string
	for _, l := range n.pool.Loaded() {
		out = append(out, l.Model+"@"+l.Version)
	}
	return out
}

// Close stops the peer: API, discovery, replication, exchange, host and
// finally the store, which is synced and closed so Badger opens cleanly
// next time.
func (n *Node) Close() error {
	n.closeOnce.Do(func() { n.closeErr = n.close() })
	return n.closeErr
}

func (n *Node) close() error {
	var errs []error
	n.stopAPI()
	if n.mdns != nil {
		n.mdns.Close()
	}
	n.cancel()
	if n.dht != nil {
		n.dht.Close()
	}
	if n.life != nil {
		n.life.Close()
	}
	if n.serving != nil {
		n.serving.Close()
	}
	if n.sess != nil {
		n.sess.Close()
	}
	if n.artifacts != nil {
		n.artifacts.Close()
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
	if n.pool != nil {
		n.pool.Close()
	}
	if n.engine != nil {
		n.engine.Close()
	}
	if n.sessDB != nil {
		if err := n.sessDB.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close sessions: %w", err))
		}
	}
	if n.store != nil {
		if err := n.store.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close store: %w", err))
		}
	}
	return errors.Join(errs...)
}

// stopAPI finishes in-flight requests, but a client that keeps a
// connection busy must not hold the peer's shutdown hostage.
func (n *Node) stopAPI() {
	if n.httpSrv == nil {
		if n.apiLn != nil {
			n.apiLn.Close()
		}
		if n.grpcLn != nil {
			n.grpcLn.Close()
		}
		return
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if n.grpcLn != nil {
		n.grpc.Stop(sctx)
	}
	if err := n.httpSrv.Shutdown(sctx); err != nil {
		n.log.Warn("API requests still running at shutdown; closing their connections", "err", err)
		n.httpSrv.Close()
	}
}
