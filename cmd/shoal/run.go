package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/shoal-mesh/shoal/inference"
	"github.com/shoal-mesh/shoal/inference/onnxmodel"
	"github.com/shoal-mesh/shoal/peer"
	"github.com/shoal-mesh/shoal/store"
)

// The default model: PaddleOCR's text-direction classifier (an image of a
// text line in, the probabilities of 0° and 180° out).
const (
	DefaultModelName    = "ocr-cls"
	DefaultModelVersion = "ppocr-v2.0"
)

func cmdRun(args []string, stdout, stderr io.Writer) error {
	return runPeer(args, stdout, stderr, false)
}

// settingNames are the environment/config-file names of run's settings.
var settingNames = []string{"DATA", "API", "MESH", "MDNS", "ORT_LIB", "LOG_LEVEL", "LOG_FORMAT", "LISTEN", "BOOTSTRAP", "TRUST",
	"KEEP_VERSIONS", "DEVICE", "INTRA_OP_THREADS", "CACHE_MB", "CACHE_TTL", "CACHE_PERSIST", "PSK", "API_TOKEN", "DEMO_RAG", "DEFAULT_MODEL",
	"ENCRYPT_KEY_FILE", "MIN_FREE_MB", "DHT", "NAT", "RELAY_SERVICE", "WARM_ROUTING", "MAX_INFLIGHT"}

// runPeer parses run's settings (flags over $SHOAL_* over the --config
// file over defaults) and starts a peer, or with printOnly prints the
// effective settings.
func runPeer(args []string, stdout, stderr io.Writer, printOnly bool) error {
	o, err := parseRun(args, stderr)
	if err != nil {
		return err
	}
	if printOnly {
		return printSettings(stdout, o.fs)
	}
	level := new(slog.LevelVar)
	logger, err := newLogger(stderr, o.logLevel, o.logFormat, level)
	if err != nil {
		return usageError("%v", err)
	}
	slog.SetDefault(logger)
	cfg := o.cfg
	cfg.Logger = logger
	defModel, demoRAG := o.defModel, o.demoRAG
	switch defModel {
	case "none":
	case "":
		if path, ok := inference.FindAsset(inference.DefaultModelPath); ok {
			cfg.DefaultModel = &peer.DefaultModel{Name: DefaultModelName, Version: DefaultModelVersion, Path: path}
		} else {
			logger.Warn("default model not found; run `make setup` to fetch it", "path", inference.DefaultModelPath)
		}
	default:
		if _, err := os.Stat(defModel); err != nil {
			return usageError("--default-model: %v", err)
		}
		cfg.DefaultModel = &peer.DefaultModel{Name: DefaultModelName, Version: DefaultModelVersion, Path: defModel}
	}
	if demoRAG {
		if tok, ok := inference.FindAsset(DefaultTokenizerPath); ok {
			cfg.DemoRAG = demoRAGConfig(tok)
		} else {
			logger.Warn("default tokenizer not found; run `make setup` for the demo collection", "path", DefaultTokenizerPath)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	node, err := peer.New(ctx, cfg)
	if err != nil {
		return explainStartError(err)
	}
	fmt.Fprintf(stdout, "shoal %s: peer %s in mesh %q\n  API     http://%s\n", buildVersion(), node.ID(), cfg.Mesh, node.APIAddr())
	for _, a := range node.Addrs() {
		fmt.Fprintf(stdout, "  libp2p  %s\n", a)
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-hup:
			reload(args, logger, level, o, node)
			continue
		case <-ctx.Done():
		}
		break
	}
	stop()
	logger.Info("shutting down")
	if err := node.Close(); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// reload re-reads the settings (flags, $SHOAL_*, the --config file) on
// SIGHUP and applies those that can change while running: log level,
// trusted publishers, API token. Changes to any other setting are logged
// as needing a restart; a bad file changes nothing.
func reload(args []string, logger *slog.Logger, level *slog.LevelVar, old *runOptions, node *peer.Node) {
	o, err := parseRun(args, io.Discard)
	if err != nil {
		logger.Error("SIGHUP: configuration not reloaded", "err", err)
		return
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(o.logLevel)); err != nil {
		logger.Error("SIGHUP: configuration not reloaded", "err", fmt.Sprintf("log level %q", o.logLevel))
		return
	}
	if err := node.Reload(peer.Reloadable{Trusted: o.cfg.Trusted, APIToken: o.cfg.APIToken}); err != nil {
		logger.Error("SIGHUP: configuration not reloaded", "err", err)
		return
	}
	level.Set(lv)
	old.fs.VisitAll(func(f *flag.Flag) {
		switch f.Name {
		case "trust", "api-token", "log-level", "config":
			return
		}
		if nf := o.fs.Lookup(f.Name); nf != nil && nf.Value.String() != f.Value.String() {
			logger.Warn("SIGHUP: setting changed; it takes effect at the next restart", "setting", f.Name)
		}
	})
}

// runOptions are run's parsed settings.
type runOptions struct {
	cfg                           peer.Config
	fs                            *flag.FlagSet
	logLevel, logFormat, defModel string
	demoRAG                       bool
}

// parseRun parses run's settings: flags over $SHOAL_* over the --config
// file over defaults.
func parseRun(args []string, stderr io.Writer) (*runOptions, error) {
	fileSettings = map[string]string{}
	cfgFile := configPath(args)
	if cfgFile != "" {
		known := map[string]bool{}
		for _, n := range settingNames {
			known[n] = true
		}
		if err := loadConfigFile(cfgFile, known); err != nil {
			return nil, usageError("%v", err)
		}
	}
	def := peer.DefaultConfig()
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.String("config", cfgFile, "TOML file of these settings (keys are the flag names); flags and $SHOAL_* override it (env SHOAL_CONFIG)")
	mdnsDef, err := envBool("MDNS", def.MDNS)
	if err != nil {
		return nil, usageError("%v", err)
	}
	dhtDef, err := envBool("DHT", def.DHT)
	if err != nil {
		return nil, usageError("%v", err)
	}
	warmDef, err := envBool("WARM_ROUTING", false)
	if err != nil {
		return nil, usageError("%v", err)
	}
	natDef, err := envBool("NAT", false)
	if err != nil {
		return nil, usageError("%v", err)
	}
	relayDef, err := envBool("RELAY_SERVICE", false)
	if err != nil {
		return nil, usageError("%v", err)
	}
	keepDef, err := envInt("KEEP_VERSIONS", def.KeepVersions)
	if err != nil {
		return nil, usageError("%v", err)
	}
	threadsDef, err := envInt("INTRA_OP_THREADS", 0)
	if err != nil {
		return nil, usageError("%v", err)
	}
	inflightDef, err := envInt("MAX_INFLIGHT", 0)
	if err != nil {
		return nil, usageError("%v", err)
	}
	cacheMBDef, err := envInt("CACHE_MB", 64)
	if err != nil {
		return nil, usageError("%v", err)
	}
	persistDef, err := envBool("CACHE_PERSIST", false)
	if err != nil {
		return nil, usageError("%v", err)
	}
	demoDef, err := envBool("DEMO_RAG", true)
	if err != nil {
		return nil, usageError("%v", err)
	}
	minFreeDef, err := envInt("MIN_FREE_MB", int(store.DefaultMinFree>>20))
	if err != nil {
		return nil, usageError("%v", err)
	}
	ttlDef, err := time.ParseDuration(envString("CACHE_TTL", "10m"))
	if err != nil {
		return nil, usageError("SHOAL_CACHE_TTL: %v", err)
	}
	var (
		dataDir   = fs.String("data", envString("DATA", def.DataDir), "data directory (env SHOAL_DATA)")
		apiAddr   = fs.String("api", envString("API", def.APIAddr), "HTTP API listen address (env SHOAL_API)")
		mesh      = fs.String("mesh", envString("MESH", def.Mesh), "mesh name: peers replicate only within a mesh (env SHOAL_MESH)")
		mdns      = fs.Bool("mdns", mdnsDef, "discover peers on the LAN with mDNS (env SHOAL_MDNS)")
		dhtOn     = fs.Bool("dht", dhtDef, "find peers of other sites through the mesh's own Kademlia DHT (env SHOAL_DHT)")
		warm      = fs.Bool("warm-routing", warmDef, "forward pinned inference requests that carry 'Shoal-Route: warm' to a peer that has the version loaded when this one has not (or has no inference slot free, see --max-inflight), and serve such requests for others (env SHOAL_WARM_ROUTING)")
		nat       = fs.Bool("nat", natDef, "UPnP/NAT-PMP port mapping, hole punching and the AutoNAT service, for peers behind NATs (env SHOAL_NAT)")
		relaySvc  = fs.Bool("relay-service", relayDef, "relay connections for peers behind NATs (circuit relay v2), e.g. on a MEC node with a public address (env SHOAL_RELAY_SERVICE)")
		ortLib    = fs.String("ort-lib", envString("ORT_LIB", ""), "onnxruntime shared library (env SHOAL_ORT_LIB; default deps/onnxruntime/libonnxruntime.so)")
		logLevel  = fs.String("log-level", envString("LOG_LEVEL", "info"), "debug, info, warn or error (env SHOAL_LOG_LEVEL)")
		logFormat = fs.String("log-format", envString("LOG_FORMAT", "auto"), "text, json, or auto: json when stderr is not a terminal (env SHOAL_LOG_FORMAT)")
		listen    = envList("LISTEN", def.ListenAddrs)
		bootstrap = envList("BOOTSTRAP", nil)
		trust     = envList("TRUST", nil)
		keep      = fs.Int("keep-versions", keepDef, "verified versions of each model kept on disk (env SHOAL_KEEP_VERSIONS)")
		device    = fs.String("device", envString("DEVICE", "auto"), "inference device: auto (CUDA when available, else CPU), cpu or cuda (env SHOAL_DEVICE)")
		threads   = fs.Int("intra-op-threads", threadsDef, "threads per inference; 0 = one per core (env SHOAL_INTRA_OP_THREADS)")
		inflight  = fs.Int("max-inflight", inflightDef, "inferences run at once at most; a request finding all taken waits within its deadline (503 past it) or, with --warm-routing and 'Shoal-Route: warm', goes to a warm peer; 0 = unbounded (env SHOAL_MAX_INFLIGHT)")
		cacheMB   = fs.Int("cache-mb", cacheMBDef, "in-memory result cache size in MiB; 0 turns the cache off (env SHOAL_CACHE_MB)")
		cacheTTL  = fs.Duration("cache-ttl", ttlDef, "how long a cached result lives (env SHOAL_CACHE_TTL)")
		persist   = fs.Bool("cache-persist", persistDef, "keep cached results in Badger too, across restarts (env SHOAL_CACHE_PERSIST)")
		psk       = fs.String("psk", envString("PSK", ""), "private-network key file (`shoal key psk FILE`): only peers with the same key can connect; TCP only (env SHOAL_PSK)")
		apiToken  = fs.String("api-token", envString("API_TOKEN", ""), "bearer token required on every state-changing API request; required when --api is not a loopback address (env SHOAL_API_TOKEN; the CLI sends $SHOAL_API_TOKEN)")
		encKey    = fs.String("encrypt-key-file", envString("ENCRYPT_KEY_FILE", ""), "encrypt the data directory at rest with this key (`shoal key encryption FILE`; keep it off the data disk) (env SHOAL_ENCRYPT_KEY_FILE)")
		minFreeMB = fs.Int("min-free-mb", minFreeDef, "free space (MiB) kept in reserve on the data directory's disk: writes that would cut into it are refused with 507; -1 turns the check off (env SHOAL_MIN_FREE_MB)")
		demoRAG   = fs.Bool("demo-rag", demoDef, "publish the default embedder and a small 'demo' collection when the mesh has none (env SHOAL_DEMO_RAG)")
		defModel  = fs.String("default-model", envString("DEFAULT_MODEL", ""), "ONNX file published and activated as model 'ocr-cls' when the mesh has none; 'none' to disable (env SHOAL_DEFAULT_MODEL; default "+inference.DefaultModelPath+")")
	)
	fs.Var(trust, "trust", "trusted publisher key ed25519:<hex> (see `shoal key show`), repeatable; this peer's own key is always trusted (env SHOAL_TRUST)")
	fs.Var(listen, "listen", "libp2p listen multiaddr, repeatable (env SHOAL_LISTEN, comma-separated; default TCP and QUIC on port 4010)")
	fs.Var(bootstrap, "bootstrap", "bootstrap peer multiaddr ending in /p2p/<id>, repeatable (env SHOAL_BOOTSTRAP, comma-separated)")
	if err := parseFlags(fs, args, stderr); err != nil {
		return nil, err
	}
	cacheBytes := int64(*cacheMB) << 20
	if *cacheMB <= 0 {
		cacheBytes = -1
	}
	cfg := peer.Config{
		DataDir: *dataDir, APIAddr: *apiAddr, Mesh: *mesh, MDNS: *mdns, DHT: *dhtOn, NAT: *nat, RelayService: *relaySvc, WarmRouting: *warm, ORTLibrary: *ortLib,
		ListenAddrs: listen.vals, Bootstrap: bootstrap.vals, Trusted: trust.vals, KeepVersions: *keep, Version: buildVersion(),
		APIToken: *apiToken, PSKFile: *psk, EncryptKeyFile: *encKey, MinFreeBytes: int64(*minFreeMB) << 20,
		Device: *device, IntraOpThreads: *threads, MaxInflight: *inflight, CacheBytes: cacheBytes, CacheTTL: *cacheTTL, CachePersist: *persist,
	}
	return &runOptions{cfg: cfg, fs: fs, logLevel: *logLevel, logFormat: *logFormat, defModel: *defModel, demoRAG: *demoRAG}, nil
}

// explainStartError turns start-up failures into one line an operator can
// act on.
func explainStartError(err error) error {
	switch {
	case errors.Is(err, store.ErrLocked):
		return fmt.Errorf("%w (is another shoal peer running on it? use --data to pick another directory)", err)
	case errors.Is(err, store.ErrEncryptionKey):
		return fmt.Errorf("%w (give the --encrypt-key-file it was written with, or none if it was written without)", err)
	case errors.Is(err, store.ErrUnwritable):
		return fmt.Errorf("%w (check the directory's permissions or use --data)", err)
	case errors.Is(err, peer.ErrAddrInUse):
		return fmt.Errorf("%w (another process holds the port; use --api or --listen)", err)
	case errors.Is(err, peer.ErrBadConfig):
		return usageError("%v", err)
	}
	return err
}

// newLogger makes run's logger; its level lives in lv, so SIGHUP can
// change it.
func newLogger(w io.Writer, level, format string, lv *slog.LevelVar) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: use debug, info, warn or error", level)
	}
	lv.Set(l)
	opts := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "auto", "":
		if f, ok := w.(*os.File); ok {
			if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
				return slog.New(slog.NewTextHandler(w, opts)), nil
			}
		}
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: use text, json or auto", format)
}

// The default embedder: a lexical hash embedder generated in-process
// (identical bytes on every peer) with the all-MiniLM-L6-v2 tokenizer that
// `make setup` fetches. See docs/retrieval.md for why it is not a semantic
// model.
const (
	DefaultEmbedderName    = "shoal-hash-embedder"
	DefaultEmbedderVersion = "v1"
	DefaultTokenizerPath   = "deps/models/minilm-tokenizer.json"
	DemoCollection         = "demo"
)

func demoRAGConfig(tokenizerPath string) *peer.DemoRAG {
	texts := []string{
		"Shoal peers replicate model versions over gossipsub without a leader.",
		"Every gateway serves inference from its own GPU, or from its CPU when it has none.",
		"A request can pin an exact model version; the peer serves exactly that artifact or says why not.",
		"Each peer knows how stale its replicated view is and refuses reads that break the caller's bound.",
		"Model artifacts travel peer to peer over bitswap and are verified by sha256 before they load.",
		"A new model version is warmed up, then swapped in without dropping a single request.",
		"Retrieval collections replicate documents together with their embeddings.",
		"The result cache keys on the artifact's content address, so a new version never answers from old entries.",
		"mDNS finds peers on a LAN; bootstrap peers join gateways across MEC sites.",
		"Publishers sign manifests with ed25519 keys that every peer is configured to trust.",
	}
	docs := make([]peer.DocRequest, len(texts))
	for i, t := range texts {
		docs[i] = peer.DocRequest{ID: fmt.Sprintf("fact-%02d", i+1), Text: t, Metadata: map[string]string{"source": "shoal-readme"}}
	}
	return &peer.DemoRAG{
		Embedder:   peer.DefaultModel{Name: DefaultEmbedderName, Version: DefaultEmbedderVersion, Data: onnxmodel.HashEmbedder(8192, 384, 1)},
		Tokenizer:  peer.DefaultModel{Name: DefaultEmbedderName + peer.TokenizerSuffix, Version: DefaultEmbedderVersion, Path: tokenizerPath, MediaType: peer.MediaTypeTokenizer, NoActivate: true},
		Collection: DemoCollection,
		Docs:       docs,
	}
}

// printSettings writes the effective settings as a TOML file that --config
// accepts, secrets masked.
func printSettings(w io.Writer, fs *flag.FlagSet) error {
	fmt.Fprintln(w, "# effective settings of `shoal run` (flags > $SHOAL_* > --config file > defaults)")
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "config" {
			return
		}
		key := strings.ReplaceAll(f.Name, "-", "_")
		v := f.Value.String()
		switch {
		case f.Name == "api-token" && v != "":
			fmt.Fprintf(w, "%s = %q # masked\n", key, "********")
		case f.Name == "listen" || f.Name == "bootstrap" || f.Name == "trust":
			var parts []string
			for _, p := range strings.Split(v, ",") {
				if p != "" {
					parts = append(parts, strconv.Quote(p))
				}
			}
			fmt.Fprintf(w, "%s = [%s]\n", key, strings.Join(parts, ", "))
		default:
			if _, isBool := f.Value.(interface{ IsBoolFlag() bool }); isBool {
				fmt.Fprintf(w, "%s = %s\n", key, v)
			} else if _, err := strconv.Atoi(v); err == nil {
				fmt.Fprintf(w, "%s = %s\n", key, v)
			} else {
				fmt.Fprintf(w, "%s = %q\n", key, v)
			}
		}
	})
	return nil
}

// cmdConfig handles `shoal config print [run flags]`.
func cmdConfig(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "print" {
		return usageError("usage: shoal config print [--config FILE] [any shoal run flag]")
	}
	return runPeer(args[1:], stdout, stderr, true)
}
