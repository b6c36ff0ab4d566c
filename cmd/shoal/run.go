package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/shoal-mesh/shoal/api"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

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
	return runPeer(args, stdout, stderr, false)
}

// runPeer parses run's settings and starts a peer, or with printOnly
// prints the effective settings.
func runPeer(args []string, stdout, stderr io.Writer, printOnly bool) error {
	s, err := parseRun(args, stderr)
	if err != nil {
		return err
	}
	if printOnly {
		return printSettings(stdout, s)
	}
	level := new(slog.LevelVar)
	logger, err := newLogger(stderr, s.LogLevel, s.LogFormat, level)
	if err != nil {
		return usageError("%v", err)
	}
	slog.SetDefault(logger)
	cfg := s.peerConfig()
	cfg.Logger = logger
	if err := addDefaultContent(&cfg, s, logger); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	node, err := peer.New(ctx, cfg)
	if err != nil {
		return explainStartError(err)
	}
	fmt.Fprintf(stdout, "shoal %s: peer %s in mesh %q\n  API     http://%s\n", buildVersion(), node.ID(), cfg.Mesh, node.APIAddr())
	if g := node.GRPCAddr(); g != "" {
		fmt.Fprintf(stdout, "  gRPC    %s\n", g)
	}
	for _, a := range node.Addrs() {
		fmt.Fprintf(stdout, "  libp2p  %s\n", a)
	}
	fmt.Fprintf(stdout, "  device  %s\n", deviceLine(node.InferenceDevice()))
	if s.Pprof != "" {
		stopProfiles, err := serveProfiles(s.Pprof, logger)
		if err != nil {
			node.Close()
			return usageError("--pprof: %v", err)
		}
		defer stopProfiles()
		fmt.Fprintf(stdout, "  pprof   http://%s/debug/pprof/\n", s.Pprof)
	}
	reloadUntilDone(ctx, func() { reload(args, logger, level, s, node) })
	stop()
	logger.Info("shutting down")
	if err := node.Close(); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// deviceLine is the banner's one line on where inference runs and, when
// not on CUDA although it was not ruled out, why: "cpu: no CUDA device
// (driver libcuda.so.1 not found)".
func deviceLine(device, why string) string {
	switch {
	case device == "":
		return "none: " + why
	case why != "":
		return device + ": " + why
	}
	return device
}

// addDefaultContent sets the default model (--default-model: a file,
// none, or the one `make setup` fetched) and the demo collection; a
// missing asset is a warning, not a reason to refuse to start.
func addDefaultContent(cfg *peer.Config, s *settings, logger *slog.Logger) error {
	switch s.DefaultModel {
	case "none":
	case "":
		if path, ok := inference.FindAsset(inference.DefaultModelPath); ok {
			cfg.DefaultModel = &peer.DefaultModel{Name: DefaultModelName, Version: DefaultModelVersion, Path: path}
		} else {
			logger.Warn("default model not found; run `make setup` to fetch it", "path", inference.DefaultModelPath)
		}
	default:
		if _, err := os.Stat(s.DefaultModel); err != nil {
			return usageError("--default-model: %v", err)
		}
		cfg.DefaultModel = &peer.DefaultModel{Name: DefaultModelName, Version: DefaultModelVersion, Path: s.DefaultModel}
	}
	if s.DemoRAG {
		emb, okEmb := inference.FindAsset(DefaultEmbedderPath)
		tok, okTok := inference.FindAsset(DefaultTokenizerPath)
		if okEmb && okTok {
			cfg.DemoRAG = demoRAGConfig(emb, tok)
		} else {
			logger.Warn("default embedder not found; run `make setup` for the demo collection", "embedder", DefaultEmbedderPath, "tokenizer", DefaultTokenizerPath)
		}
	}
	return nil
}

// reloadUntilDone calls reload at each SIGHUP until ctx ends.
func reloadUntilDone(ctx context.Context, reload func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-hup:
			reload()
		case <-ctx.Done():
			return
		}
	}
}

// reload re-reads the settings (flags, $SHOAL_*, the --config file) on
// SIGHUP and applies those that can change while running (the rows marked
// live: log level, trusted publishers, API token). Changes to any other
// setting, against the settings the peer started with, are logged as
// needing a restart; a bad file changes nothing.
func reload(args []string, logger *slog.Logger, level *slog.LevelVar, started *settings, node *peer.Node) {
	s, err := parseRun(args, io.Discard)
	if err != nil {
		logger.Error("SIGHUP: configuration not reloaded", "err", err)
		return
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(s.LogLevel)); err != nil {
		logger.Error("SIGHUP: configuration not reloaded", "err", fmt.Sprintf("log level %q", s.LogLevel))
		return
	}
	if err := node.Reload(peer.Reloadable{Trusted: s.Trust, APIToken: s.APIToken}); err != nil {
		logger.Error("SIGHUP: configuration not reloaded", "err", err)
		return
	}
	level.Set(lv)
	for _, name := range needRestart(started, s) {
		logger.Warn("SIGHUP: setting changed; it takes effect at the next restart", "setting", name)
	}
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

// The default embedder: sentence-transformers' all-MiniLM-L6-v2 (384-d,
// mean pooling, normalised), int8-quantised ONNX, with its tokenizer —
// both fetched and checked by `make setup` (origin, licence and figures in
// docs/retrieval.md). Like any model it is a replicated, versioned
// artifact: a fleet switches embedders by pushing and activating another.
const (
	DefaultEmbedderName    = "all-minilm-l6-v2"
	DefaultEmbedderVersion = "int8-1"
	DefaultEmbedderPath    = "deps/models/minilm-l6-v2-q.onnx"
	DefaultTokenizerPath   = "deps/models/minilm-tokenizer.json"
	DemoCollection         = "demo"
)

func demoRAGConfig(embedderPath, tokenizerPath string) *peer.DemoRAG {
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
	docs := make([]api.DocRequest, len(texts))
	for i, t := range texts {
		docs[i] = api.DocRequest{ID: fmt.Sprintf("fact-%02d", i+1), Text: t, Metadata: map[string]string{"source": "shoal-readme"}}
	}
	return &peer.DemoRAG{
		Embedder:   peer.DefaultModel{Name: DefaultEmbedderName, Version: DefaultEmbedderVersion, Path: embedderPath},
		Tokenizer:  peer.DefaultModel{Name: DefaultEmbedderName + api.TokenizerSuffix, Version: DefaultEmbedderVersion, Path: tokenizerPath, MediaType: api.MediaTypeTokenizer, NoActivate: true},
		Collection: DemoCollection,
		Docs:       docs,
	}
}
