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
	"strings"
	"syscall"
	"time"

	"github.com/shoal-mesh/shoal/inference"
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
	def := peer.DefaultConfig()
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	mdnsDef, err := envBool("MDNS", def.MDNS)
	if err != nil {
		return usageError("%v", err)
	}
	keepDef, err := envInt("KEEP_VERSIONS", def.KeepVersions)
	if err != nil {
		return usageError("%v", err)
	}
	threadsDef, err := envInt("INTRA_OP_THREADS", 0)
	if err != nil {
		return usageError("%v", err)
	}
	cacheMBDef, err := envInt("CACHE_MB", 64)
	if err != nil {
		return usageError("%v", err)
	}
	persistDef, err := envBool("CACHE_PERSIST", false)
	if err != nil {
		return usageError("%v", err)
	}
	ttlDef, err := time.ParseDuration(envString("CACHE_TTL", "10m"))
	if err != nil {
		return usageError("SHOAL_CACHE_TTL: %v", err)
	}
	var (
		dataDir   = fs.String("data", envString("DATA", def.DataDir), "data directory (env SHOAL_DATA)")
		apiAddr   = fs.String("api", envString("API", def.APIAddr), "HTTP API listen address (env SHOAL_API)")
		mesh      = fs.String("mesh", envString("MESH", def.Mesh), "mesh name: peers replicate only within a mesh (env SHOAL_MESH)")
		mdns      = fs.Bool("mdns", mdnsDef, "discover peers on the LAN with mDNS (env SHOAL_MDNS)")
		ortLib    = fs.String("ort-lib", envString("ORT_LIB", ""), "onnxruntime shared library (env SHOAL_ORT_LIB; default deps/onnxruntime/libonnxruntime.so)")
		logLevel  = fs.String("log-level", envString("LOG_LEVEL", "info"), "debug, info, warn or error (env SHOAL_LOG_LEVEL)")
		logFormat = fs.String("log-format", envString("LOG_FORMAT", "auto"), "text, json, or auto: json when stderr is not a terminal (env SHOAL_LOG_FORMAT)")
		listen    = envList("LISTEN", def.ListenAddrs)
		bootstrap = envList("BOOTSTRAP", nil)
		trust     = envList("TRUST", nil)
		keep      = fs.Int("keep-versions", keepDef, "verified versions of each model kept on disk (env SHOAL_KEEP_VERSIONS)")
		device    = fs.String("device", envString("DEVICE", "auto"), "inference device: auto (CUDA when available, else CPU), cpu or cuda (env SHOAL_DEVICE)")
		threads   = fs.Int("intra-op-threads", threadsDef, "threads per inference; 0 = one per core (env SHOAL_INTRA_OP_THREADS)")
		cacheMB   = fs.Int("cache-mb", cacheMBDef, "in-memory result cache size in MiB; 0 turns the cache off (env SHOAL_CACHE_MB)")
		cacheTTL  = fs.Duration("cache-ttl", ttlDef, "how long a cached result lives (env SHOAL_CACHE_TTL)")
		persist   = fs.Bool("cache-persist", persistDef, "keep cached results in Badger too, across restarts (env SHOAL_CACHE_PERSIST)")
		defModel  = fs.String("default-model", envString("DEFAULT_MODEL", ""), "ONNX file published and activated as model 'ocr-cls' when the mesh has none; 'none' to disable (env SHOAL_DEFAULT_MODEL; default "+inference.DefaultModelPath+")")
	)
	fs.Var(trust, "trust", "trusted publisher key ed25519:<hex> (see `shoal key show`), repeatable; this peer's own key is always trusted (env SHOAL_TRUST)")
	fs.Var(listen, "listen", "libp2p listen multiaddr, repeatable (env SHOAL_LISTEN, comma-separated; default TCP and QUIC on port 4010)")
	fs.Var(bootstrap, "bootstrap", "bootstrap peer multiaddr ending in /p2p/<id>, repeatable (env SHOAL_BOOTSTRAP, comma-separated)")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	logger, err := newLogger(stderr, *logLevel, *logFormat)
	if err != nil {
		return usageError("%v", err)
	}
	slog.SetDefault(logger)

	cacheBytes := int64(*cacheMB) << 20
	if *cacheMB <= 0 {
		cacheBytes = -1
	}
	cfg := peer.Config{
		DataDir: *dataDir, APIAddr: *apiAddr, Mesh: *mesh, MDNS: *mdns, ORTLibrary: *ortLib,
		ListenAddrs: listen.vals, Bootstrap: bootstrap.vals, Trusted: trust.vals, KeepVersions: *keep, Version: buildVersion(), Logger: logger,
		Device: *device, IntraOpThreads: *threads, CacheBytes: cacheBytes, CacheTTL: *cacheTTL, CachePersist: *persist,
	}
	switch *defModel {
	case "none":
	case "":
		if path, ok := inference.FindAsset(inference.DefaultModelPath); ok {
			cfg.DefaultModel = &peer.DefaultModel{Name: DefaultModelName, Version: DefaultModelVersion, Path: path}
		} else {
			logger.Warn("default model not found; run `make setup` to fetch it", "path", inference.DefaultModelPath)
		}
	default:
		if _, err := os.Stat(*defModel); err != nil {
			return usageError("--default-model: %v", err)
		}
		cfg.DefaultModel = &peer.DefaultModel{Name: DefaultModelName, Version: DefaultModelVersion, Path: *defModel}
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
	<-ctx.Done()
	stop()
	logger.Info("shutting down")
	if err := node.Close(); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// explainStartError turns start-up failures into one line an operator can
// act on.
func explainStartError(err error) error {
	switch {
	case errors.Is(err, store.ErrLocked):
		return fmt.Errorf("%w (is another shoal peer running on it? use --data to pick another directory)", err)
	case errors.Is(err, store.ErrUnwritable):
		return fmt.Errorf("%w (check the directory's permissions or use --data)", err)
	case errors.Is(err, peer.ErrAddrInUse):
		return fmt.Errorf("%w (another process holds the port; use --api or --listen)", err)
	case errors.Is(err, peer.ErrBadConfig):
		return usageError("%v", err)
	}
	return err
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: use debug, info, warn or error", level)
	}
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
