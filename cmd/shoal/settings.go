package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/shoal-mesh/shoal/inference"
	"github.com/shoal-mesh/shoal/peer"
	"github.com/shoal-mesh/shoal/store"
)

// settings are `shoal run`'s settings, typed. The --config file decodes
// straight into it (the toml tags are its keys); the environment and the
// flags then overwrite fields through the rows of runSettings.
type settings struct {
	Data           string   `toml:"data"`
	API            string   `toml:"api"`
	GRPC           string   `toml:"grpc"`
	Mesh           string   `toml:"mesh"`
	Site           string   `toml:"site"`
	Listen         []string `toml:"listen"`
	Bootstrap      []string `toml:"bootstrap"`
	MDNS           bool     `toml:"mdns"`
	DHT            bool     `toml:"dht"`
	NAT            bool     `toml:"nat"`
	RelayService   bool     `toml:"relay_service"`
	Trust          []string `toml:"trust"`
	PSK            string   `toml:"psk"`
	APIToken       string   `toml:"api_token"`
	EncryptKeyFile string   `toml:"encrypt_key_file"`
	MinFreeMB      int      `toml:"min_free_mb"`
	KeepVersions   int      `toml:"keep_versions"`
	FoldAfter      int      `toml:"fold_after"`
	FoldPruneDelay duration `toml:"fold_prune_delay"`
	ORTLib         string   `toml:"ort_lib"`
	Device         string   `toml:"device"`
	IntraOpThreads int      `toml:"intra_op_threads"`
	MaxInflight    int      `toml:"max_inflight"`
	WarmRouting    bool     `toml:"warm_routing"`
	ArtifactSwarm  bool     `toml:"artifact_swarm"`
	CacheMB        int      `toml:"cache_mb"`
	CacheTTL       duration `toml:"cache_ttl"`
	CachePersist   bool     `toml:"cache_persist"`
	DefaultModel   string   `toml:"default_model"`
	DemoRAG        bool     `toml:"demo_rag"`
	LogLevel       string   `toml:"log_level"`
	LogFormat      string   `toml:"log_format"`
	Pprof          string   `toml:"pprof"`
}

// duration is a time.Duration written as text ("10m"). Its own type,
// because the TOML decoder would take a bare integer for time.Duration
// as nanoseconds: `cache_ttl = 600` must be an error, not 600 ns.
type duration time.Duration

func (d *duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = duration(v)
	return nil
}

func (d duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// setting is one row of runSettings: everything about one setting of
// `shoal run` in one place. The flag and the environment variable are
// derived from the TOML key, so the three names cannot drift apart.
type setting struct {
	key    string                 // TOML key
	help   string                 // the flag's help; flagHelp adds the key and variable
	field  func(*settings) any    // the typed field: *string, *int, *bool, *duration or *[]string
	get    func(*settings) any    // the field's value
	reset  func(*settings)        // sets the built-in default
	check  func(*settings) string // "" when valid, else how to fix it
	live   bool                   // SIGHUP applies it without a restart
	secret bool                   // masked by `shoal config print`
}

// opt makes a row for the field field returns, with default def. Each
// check returns "" for a good value, else what to use instead.
func opt[T any](key string, field func(*settings) *T, def T, help string, checks ...func(T) string) setting {
	return setting{
		key: key, help: help,
		field: func(s *settings) any { return field(s) },
		get:   func(s *settings) any { return *field(s) },
		reset: func(s *settings) {
			*field(s) = def
			if l, ok := any(field(s)).(*[]string); ok {
				// The TOML decoder fills a list in place: keep def's
				// array out of its reach.
				*l = slices.Clone(*l)
			}
		},
		check: func(s *settings) string {
			for _, c := range checks {
				if msg := c(*field(s)); msg != "" {
					return msg
				}
			}
			return ""
		},
	}
}

// liveOnReload marks r as applied by SIGHUP.
func (r setting) liveOnReload() setting { r.live = true; return r }

// masked marks r as a secret.
func (r setting) masked() setting { r.secret = true; return r }

func (r setting) flagName() string { return strings.ReplaceAll(r.key, "_", "-") }
func (r setting) envName() string  { return "SHOAL_" + strings.ToUpper(r.key) }

// names is how messages point at a setting from each place it can be set.
func (r setting) names() string {
	return fmt.Sprintf("flag --%s, env %s", r.flagName(), r.envName())
}

func (r setting) flagHelp() string {
	if _, list := r.get(&settings{}).([]string); list {
		return fmt.Sprintf("%s (key %s; env %s, comma-separated)", r.help, r.key, r.envName())
	}
	return fmt.Sprintf("%s (key %s, env %s)", r.help, r.key, r.envName())
}

// atLeast accepts ints of least or more; fix says what to use instead.
func atLeast(least int, fix string) func(int) string {
	return func(n int) string {
		if n < least {
			return fix
		}
		return ""
	}
}

// oneOf accepts the given words; fix says which they are.
func oneOf(fix string, words ...string) func(string) string {
	return func(s string) string {
		if slices.Contains(words, s) {
			return ""
		}
		return fix
	}
}

// anyCase makes check take s in any case.
func anyCase(check func(string) string) func(string) string {
	return func(s string) string { return check(strings.ToLower(s)) }
}

// logLevel accepts what slog.Level parses (also "INFO", "warn+2").
func logLevel(s string) string {
	var l slog.Level
	if l.UnmarshalText([]byte(s)) != nil {
		return "use debug, info, warn or error"
	}
	return ""
}

// peerDefaults are what `shoal run` uses with no settings at all.
var peerDefaults = peer.DefaultConfig()

// runSettings is every setting of `shoal run`, in the order `shoal config
// print` writes them.
var runSettings = []setting{
	opt("data", func(s *settings) *string { return &s.Data }, peerDefaults.DataDir, "data directory"),
	opt("api", func(s *settings) *string { return &s.API }, peerDefaults.APIAddr, "HTTP API listen address"),
	opt("grpc", func(s *settings) *string { return &s.GRPC }, peerDefaults.GRPCAddr,
		"OIP v2 over gRPC (KServe's GRPCInferenceService) listen address, or 'off'"),
	opt("mesh", func(s *settings) *string { return &s.Mesh }, peerDefaults.Mesh, "mesh name: peers replicate only within a mesh"),
	opt("site", func(s *settings) *string { return &s.Site }, "",
		"this peer's site: a site-only session is replicated only among the peers of its site"),
	opt("listen", func(s *settings) *[]string { return &s.Listen }, peerDefaults.ListenAddrs,
		"libp2p listen multiaddr, repeatable (default TCP and QUIC on port 4010)"),
	opt("bootstrap", func(s *settings) *[]string { return &s.Bootstrap }, nil, "bootstrap peer multiaddr ending in /p2p/<id>, repeatable"),
	opt("mdns", func(s *settings) *bool { return &s.MDNS }, peerDefaults.MDNS, "discover peers on the LAN with mDNS"),
	opt("dht", func(s *settings) *bool { return &s.DHT }, peerDefaults.DHT, "find peers of other sites through the mesh's own Kademlia DHT"),
	opt("nat", func(s *settings) *bool { return &s.NAT }, false,
		"UPnP/NAT-PMP port mapping, hole punching and the AutoNAT service, for peers behind NATs"),
	opt("relay_service", func(s *settings) *bool { return &s.RelayService }, false,
		"relay connections for peers behind NATs (circuit relay v2), e.g. on a MEC node with a public address"),
	opt("trust", func(s *settings) *[]string { return &s.Trust }, nil,
		"trusted publisher key ed25519:<hex> (see 'shoal key show'), repeatable; this peer's own key is always trusted").liveOnReload(),
	opt("psk", func(s *settings) *string { return &s.PSK }, "",
		"private-network key file ('shoal key psk FILE'): only peers with the same key can connect; TCP only"),
	opt("api_token", func(s *settings) *string { return &s.APIToken }, "",
		"bearer token required on every state-changing API request; required when --api is not a loopback address (the CLI sends $SHOAL_API_TOKEN)").liveOnReload().masked(),
	opt("encrypt_key_file", func(s *settings) *string { return &s.EncryptKeyFile }, "",
		"encrypt the data directory at rest with this key ('shoal key encryption FILE'; keep it off the data disk)"),
	opt("min_free_mb", func(s *settings) *int { return &s.MinFreeMB }, int(store.DefaultMinFree>>20),
		"free space (MiB) kept in reserve on the data directory's disk: writes that would cut into it are refused with 507; -1 turns the check off",
		atLeast(-1, "use -1 (no reserve) or more")),
	opt("keep_versions", func(s *settings) *int { return &s.KeepVersions }, peerDefaults.KeepVersions,
		"verified versions of each model kept on disk", atLeast(0, "use 1 or more (0 means the default, 2)")),
	opt("fold_after", func(s *settings) *int { return &s.FoldAfter }, 10000,
		"records replacing or deleting a value merged since the newest fold (and at least as many as the keys held) before this peer folds the replicated history: rewrites the live state, prunes the history below; -1: never fold here",
		atLeast(-1, "use -1 (never) or more (0 means the default, 10000)")),
	opt("fold_prune_delay", func(s *settings) *duration { return &s.FoldPruneDelay }, duration(time.Minute),
		"how long folded history stays after a fold, for peers still fetching it"),
	opt("ort_lib", func(s *settings) *string { return &s.ORTLib }, "",
		"onnxruntime shared library (empty: deps/onnxruntime-gpu/libonnxruntime.so when make setup-gpu installed it, else deps/onnxruntime/libonnxruntime.so)"),
	opt("device", func(s *settings) *string { return &s.Device }, "auto",
		"inference device: auto (CUDA when available, else CPU), cpu or cuda", oneOf("use auto, cpu or cuda", "auto", "cpu", "cuda")),
	opt("intra_op_threads", func(s *settings) *int { return &s.IntraOpThreads }, 0,
		"threads per inference; 0 = one per core", atLeast(0, "use 0 (one per core) or more")),
	opt("max_inflight", func(s *settings) *int { return &s.MaxInflight }, 0,
		"inferences run at once at most; a request finding all taken waits within its deadline (503 past it) or, with --warm-routing and 'Shoal-Route: warm', goes to a warm peer; 0 = unbounded",
		atLeast(0, "use 0 (unbounded) or more")),
	opt("artifact_swarm", func(s *settings) *bool { return &s.ArtifactSwarm }, true,
		"fetch new model versions through the mesh's artifact swarm (the peers fetching at once share the origin's blocks) before bitswap, and serve it; off: bitswap alone"),
	opt("warm_routing", func(s *settings) *bool { return &s.WarmRouting }, false,
		"forward pinned inference requests that carry 'Shoal-Route: warm' to a peer that has the version loaded when this one has not (or has no inference slot free, see --max-inflight), and serve such requests for others"),
	opt("cache_mb", func(s *settings) *int { return &s.CacheMB }, 64,
		"in-memory result cache size in MiB; 0 turns the cache off", atLeast(0, "use 0 (no cache) or more")),
	opt("cache_ttl", func(s *settings) *duration { return &s.CacheTTL }, duration(10*time.Minute), "how long a cached result lives"),
	opt("cache_persist", func(s *settings) *bool { return &s.CachePersist }, false, "keep cached results in Badger too, across restarts"),
	opt("default_model", func(s *settings) *string { return &s.DefaultModel }, "",
		"ONNX file published and activated as model 'ocr-cls' when the mesh has none; 'none' to disable (empty: "+inference.DefaultModelPath+")"),
	opt("demo_rag", func(s *settings) *bool { return &s.DemoRAG }, true,
		"publish the default embedder and a small 'demo' collection when the mesh has none"),
	opt("log_level", func(s *settings) *string { return &s.LogLevel }, "info", "debug, info, warn or error", logLevel).liveOnReload(),
	opt("log_format", func(s *settings) *string { return &s.LogFormat }, "auto",
		"text, json, or auto: json when stderr is not a terminal", anyCase(oneOf("use text, json or auto", "text", "json", "auto", ""))),
	opt("pprof", func(s *settings) *string { return &s.Pprof }, "",
		"serve Go's runtime profiles (net/http/pprof) on this loopback address, e.g. 127.0.0.1:6060; empty: off", loopbackAddr),
}

// loopbackAddr accepts an empty address or host:port on a loopback IP:
// profiles show the peer's internals and have no token.
func loopbackAddr(s string) string {
	if s == "" {
		return ""
	}
	host, _, err := net.SplitHostPort(s)
	if ip, perr := netip.ParseAddr(host); err != nil || perr != nil || !ip.IsLoopback() {
		return "use a loopback host:port such as 127.0.0.1:6060"
	}
	return ""
}

// defaultSettings returns the built-in defaults of every setting.
func defaultSettings() *settings {
	s := &settings{}
	for _, r := range runSettings {
		r.reset(s)
	}
	return s
}

// settingByKey finds the row of a TOML key.
func settingByKey(key string) (setting, bool) {
	for _, r := range runSettings {
		if r.key == key {
			return r, true
		}
	}
	return setting{}, false
}

// peerConfig is the peer.Config these settings make. The default model
// and the demo collection are resolved by runPeer (they need files).
func (s *settings) peerConfig() peer.Config {
	cacheBytes := int64(s.CacheMB) << 20
	if s.CacheMB <= 0 {
		cacheBytes = -1 // peer.Config's zero means the default size
	}
	return peer.Config{
		DataDir: s.Data, APIAddr: s.API, GRPCAddr: grpcAddr(s.GRPC), Mesh: s.Mesh, Site: s.Site, ListenAddrs: s.Listen, Bootstrap: s.Bootstrap,
		MDNS: s.MDNS, DHT: s.DHT, NAT: s.NAT, RelayService: s.RelayService,
		Trusted: s.Trust, PSKFile: s.PSK, APIToken: s.APIToken, EncryptKeyFile: s.EncryptKeyFile,
		MinFreeBytes: int64(s.MinFreeMB) << 20, KeepVersions: s.KeepVersions,
		FoldAfter: s.FoldAfter, FoldPruneDelay: time.Duration(s.FoldPruneDelay),
		ORTLibrary: s.ORTLib, Device: s.Device, IntraOpThreads: s.IntraOpThreads, MaxInflight: s.MaxInflight, WarmRouting: s.WarmRouting,
		NoArtifactSwarm: !s.ArtifactSwarm,
		CacheBytes:      cacheBytes, CacheTTL: time.Duration(s.CacheTTL), CachePersist: s.CachePersist,
		Version: buildVersion(),
	}
}

// grpcAddr is the --grpc setting as peer.Config takes it: "off" (any
// case) turns the gRPC API off.
func grpcAddr(v string) string {
	if strings.EqualFold(v, "off") {
		return ""
	}
	return v
}
