package peer

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/libp2p/go-libp2p/core/connmgr"
	libp2ppeer "github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// ErrBadConfig wraps every configuration error, so callers can tell a
// mistake of the operator's from a failure of the machine.
var ErrBadConfig = errors.New("bad configuration")

// Config configures a Node. DefaultConfig returns the documented defaults;
// a zero field in a Config passed to New takes its default too, except the
// booleans, which are taken as given.
type Config struct {
	// DataDir holds the identity key, Badger and everything else this
	// peer persists. Default "./shoal-data".
	DataDir string
	// APIAddr is the HTTP API's listen address. Default "127.0.0.1:7480";
	// port 0 picks a free port (see Node.APIAddr).
	APIAddr string
	// GRPCAddr is the listen address of the Open Inference Protocol v2
	// over gRPC (KServe's GRPCInferenceService, which Triton's and
	// KServe's clients speak). DefaultConfig: "127.0.0.1:7481"; empty:
	// no gRPC API (a zero Config does not take a second port unasked).
	// Port 0 picks a free port (see Node.GRPCAddr). Every method it
	// serves is a read, as the same calls are on HTTP; like APIAddr it
	// needs APIToken set to listen off loopback.
	GRPCAddr string
	// Site names the site (a LAN, a building, a road segment) this peer
	// belongs to. A session created site-only on a peer with a site is
	// replicated only among the peers of that site. Empty: no site.
	Site string
	// PSKFile, when set, makes the mesh private: a libp2p pre-shared key
	// (the IPFS swarm.key format, see `shoal key psk`); peers without it
	// cannot even complete a connection. QUIC cannot run under a PSK, so
	// only TCP listen addresses are used.
	PSKFile string
	// APIToken, when set, is the bearer token every state-changing API
	// request must carry (Authorization: Bearer <token>). Required when
	// APIAddr is not a loopback address: a gateway's API must not take
	// writes from its network unauthenticated.
	APIToken string
	// ListenAddrs are libp2p multiaddrs. Default TCP and QUIC on port 4010
	// on every interface.
	ListenAddrs []string
	// Bootstrap peers, as multiaddrs ending in /p2p/<peer id>. The node
	// keeps redialling them while they are disconnected.
	Bootstrap []string
	// MDNS turns on LAN discovery. DefaultConfig turns it on.
	MDNS bool
	// DHT runs a Kademlia DHT private to the mesh (protocol prefix
	// /shoal/<mesh>) and a rendezvous on it, so peers of other sites are
	// found through any peer already known — a bootstrap address per site
	// is enough. DefaultConfig turns it on.
	DHT bool
	// NoArtifactSwarm leaves artifact fetches to bitswap alone. By default a
	// peer fetches a new version through the mesh's artifact swarm first,
	// which stripes the origin's blocks over the peers fetching at once and
	// has them pass the rest around (store/artifacts/swarm.go), and serves
	// it to others; bitswap then fetches only what the swarm could not.
	NoArtifactSwarm bool
	// WarmRouting lets this peer forward a pinned inference request that
	// carries "Shoal-Route: warm" to a peer that has the version loaded,
	// when it has not loaded it itself or has no inference slot free (see
	// MaxInflight), and lets it serve such requests
	// for others (it announces its loaded versions in its heartbeats).
	// Off by default.
	WarmRouting bool
	// MaxInflight bounds the inferences this peer runs at once, across
	// models (result-cache hits take no slot). A request that finds every
	// slot taken waits for one within its deadline and is refused past it
	// (503, Retry-After); with WarmRouting, a pinned request that opted in
	// goes instead to a peer that has the version loaded, and a forwarded
	// request is refused at once so that its origin serves it. 0 (the
	// default) leaves inferences unbounded.
	MaxInflight int
	// NAT turns on libp2p's NAT helpers: UPnP/NAT-PMP port mapping, hole
	// punching and the AutoNAT service. Off by default.
	NAT bool
	// RelayService lets this peer relay connections for peers behind NATs
	// (circuit relay v2), e.g. on a MEC node with a public address. Off
	// by default.
	RelayService bool
	// Mesh names the replication group; it derives the gossipsub topics and
	// the mDNS service name. Default "shoal".
	Mesh string
	// ORTLibrary is the onnxruntime shared library. Empty: look in the
	// default places (see inference.FindLibrary).
	ORTLibrary string
	// Device runs inference on auto (CUDA when its provider loads and a
	// GPU answers, else CPU), cpu or cuda (start-up fails without CUDA).
	// Default auto.
	Device string
	// IntraOpThreads bounds the threads of one inference; 0 leaves
	// one per core (runtime.NumCPU, threads not pinned).
	IntraOpThreads int
	// CacheBytes bounds the in-memory result cache. Default 64 MiB;
	// negative turns the cache off.
	CacheBytes int64
	// CacheTTL is how long a cached result lives. Default 10 minutes.
	CacheTTL time.Duration
	// CachePersist adds a Badger tier to the result cache, so results
	// survive restarts (within CacheTTL).
	CachePersist bool
	// DefaultModel, when set, is published and activated once this peer
	// has synced with the mesh, unless the mesh already has that model.
	DefaultModel *DefaultModel
	// DemoRAG, when set, publishes an embedder and its tokenizer and fills
	// a small collection, unless the mesh already has that collection.
	DemoRAG *DemoRAG
	// EncryptKeyFile, when set, encrypts the data directory at rest
	// (Badger's AES encryption): a file holding 32 random bytes in hex, as
	// `shoal key encryption FILE` writes. Keep it off the data disk.
	EncryptKeyFile string
	// APIHeaderTimeout bounds how long a client may take to send a
	// request's headers (Slowloris); APIReadTimeout bounds reading a whole
	// request (artifact uploads extend it). Defaults 10s and 1m.
	APIHeaderTimeout, APIReadTimeout time.Duration
	// MinFreeBytes is the free space kept in reserve on the data
	// directory's file system: API writes and artifact fetches that would
	// cut into it are refused with ErrDiskFull (HTTP 507) while reads go
	// on. Default store.DefaultMinFree (64 MiB); negative turns it off.
	MinFreeBytes int64
	// NoSync skips the sync that makes each of this peer's own writes
	// durable before it is acknowledged (tests and benchmarks only: an
	// acknowledged write can be lost on power failure).
	NoSync bool
	// Trusted publisher keys ("ed25519:<hex>") whose manifests and
	// activations enter the effective state, besides this peer's own key.
	Trusted []string
	// KeepVersions is how many verified versions of each model stay on
	// disk (the served one included). Default 2.
	KeepVersions int
	// Gater, when set, vets every libp2p connection (allow lists, or tests
	// that cut a peer off).
	Gater connmgr.ConnectionGater
	// HeartbeatInterval and PeerTimeout tune the staleness tracker
	// (defaults 1s and 5s; see crdt.Config).
	HeartbeatInterval time.Duration
	PeerTimeout       time.Duration
	// FoldAfter is how many records that replace or delete a value must
	// be merged since the newest fold (and at least as many as the keys
	// held) before this peer folds the replicated history: rewrites the
	// live state and prunes what lies below (see crdt.Config.FoldAfter).
	// Default 10,000; negative: this peer never folds, though it still
	// prunes under the folds of the peers it trusts.
	FoldAfter int
	// FoldPruneDelay is how long folded history stays for peers still
	// walking it. Default 1m.
	FoldPruneDelay time.Duration
	// RedialInterval between checks that bootstrap and known mesh peers
	// are connected (failed dials back off per peer). Default 1s.
	RedialInterval time.Duration
	// Version is reported in status and metrics.
	Version string
	// Logger; defaults to slog.Default().
	Logger *slog.Logger
}

// Defaults.
const (
	DefaultDataDir = "./shoal-data"
	DefaultAPIAddr = "127.0.0.1:7480"
	// DefaultGRPCAddr is where `shoal run` serves OIP v2 over gRPC.
	DefaultGRPCAddr = "127.0.0.1:7481"
	DefaultMesh     = "shoal"
	DefaultP2PPort  = 4010
)

// DefaultListenAddrs are TCP and QUIC on DefaultP2PPort.
func DefaultListenAddrs() []string {
	return []string{
		fmt.Sprintf("/ip4/0.0.0.0/tcp/%d", DefaultP2PPort),
		fmt.Sprintf("/ip4/0.0.0.0/udp/%d/quic-v1", DefaultP2PPort),
	}
}

// DefaultConfig returns the configuration `shoal run` uses with no flags.
func DefaultConfig() Config {
	return Config{
		DataDir:      DefaultDataDir,
		APIAddr:      DefaultAPIAddr,
		GRPCAddr:     DefaultGRPCAddr,
		ListenAddrs:  DefaultListenAddrs(),
		MDNS:         true,
		DHT:          true,
		Mesh:         DefaultMesh,
		KeepVersions: 2,
	}
}

func (c *Config) applyDefaults() {
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if c.APIAddr == "" {
		c.APIAddr = DefaultAPIAddr
	}
	if len(c.ListenAddrs) == 0 {
		c.ListenAddrs = DefaultListenAddrs()
	}
	if c.Mesh == "" {
		c.Mesh = DefaultMesh
	}
	if c.KeepVersions <= 0 {
		c.KeepVersions = 2
	}
	if c.RedialInterval <= 0 {
		c.RedialInterval = time.Second
	}
	if c.Device == "" {
		c.Device = "auto"
	}
	if c.CacheBytes == 0 {
		c.CacheBytes = 64 << 20
	}
	if c.CacheTTL <= 0 {
		c.CacheTTL = 10 * time.Minute
	}
	if c.Version == "" {
		c.Version = "dev"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// parsed holds the validated forms of the config's strings.
type parsed struct {
	listen    []ma.Multiaddr
	bootstrap []libp2ppeer.AddrInfo
}

func (c *Config) validate() (parsed, error) {
	var p parsed
	for _, s := range c.ListenAddrs {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return p, fmt.Errorf("%w: listen address %q: %v", ErrBadConfig, s, err)
		}
		p.listen = append(p.listen, a)
	}
	for _, s := range c.Bootstrap {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return p, fmt.Errorf("%w: bootstrap address %q: %v", ErrBadConfig, s, err)
		}
		ai, err := libp2ppeer.AddrInfoFromP2pAddr(a)
		if err != nil {
			return p, fmt.Errorf("%w: bootstrap address %q must end in /p2p/<peer id>: %v", ErrBadConfig, s, err)
		}
		p.bootstrap = append(p.bootstrap, *ai)
	}
	switch c.Device {
	case "auto", "cpu", "cuda":
	default:
		return p, fmt.Errorf("%w: device %q: use auto, cpu or cuda", ErrBadConfig, c.Device)
	}
	if c.IntraOpThreads < 0 {
		return p, fmt.Errorf("%w: intra-op threads %d: use 0 (one per core) or more", ErrBadConfig, c.IntraOpThreads)
	}
	if c.MaxInflight < 0 {
		return p, fmt.Errorf("%w: max in-flight inferences %d: use 0 (unbounded) or more", ErrBadConfig, c.MaxInflight)
	}
	host, _, err := net.SplitHostPort(c.APIAddr)
	if err != nil {
		return p, fmt.Errorf("%w: API address %q: %v", ErrBadConfig, c.APIAddr, err)
	}
	if c.APIToken == "" && !loopbackHost(host) {
		return p, fmt.Errorf("%w: refusing to serve the API on %s without an API token (--api-token or SHOAL_API_TOKEN); loopback addresses need none", ErrBadConfig, c.APIAddr)
	}
	if c.GRPCAddr != "" {
		ghost, _, err := net.SplitHostPort(c.GRPCAddr)
		if err != nil {
			return p, fmt.Errorf("%w: gRPC address %q: %v", ErrBadConfig, c.GRPCAddr, err)
		}
		if c.APIToken == "" && !loopbackHost(ghost) {
			return p, fmt.Errorf("%w: refusing to serve gRPC on %s without an API token (--api-token or SHOAL_API_TOKEN); loopback addresses need none", ErrBadConfig, c.GRPCAddr)
		}
	}
	for _, r := range c.Site {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return p, fmt.Errorf("%w: site name %q: use letters, digits, '-', '_' and '.'", ErrBadConfig, c.Site)
		}
	}
	for _, r := range c.Mesh {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return p, fmt.Errorf("%w: mesh name %q: use letters, digits, '-', '_' and '.'", ErrBadConfig, c.Mesh)
		}
	}
	return p, nil
}

// loopbackHost reports whether an API listen host is loopback only: an
// API elsewhere needs a token (at start and through every reload).
func loopbackHost(host string) bool {
	if ip := net.ParseIP(host); ip != nil {
		return ip.IsLoopback()
	}
	return host == "localhost"
}
