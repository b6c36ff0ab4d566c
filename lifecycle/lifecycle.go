// Package lifecycle keeps every model's effective current version
// fetched, verified, loaded and served on this peer (design §3): it
// follows the registry's changes, fetches and verifies artifacts, loads
// and warms up onnxruntime sessions, swaps them in, keeps N versions on
// disk for rollback and marks versions that do not load here as bad while
// the previous one keeps serving.
//
// peer.New assembles it; serving and rag acquire sessions through it
// (behind interfaces they define), and the HTTP API reads its state.
package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	cid "github.com/ipfs/go-cid"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/inference"
	"github.com/shoal-mesh/shoal/store/artifacts"
)

// Errors of session acquisition. The API maps each to a stable code.
var (
	// ErrInferenceOff: onnxruntime is unavailable on this peer.
	ErrInferenceOff = errors.New("inference is unavailable on this peer")
	// ErrNotONNX: the version is an artifact of another media type.
	ErrNotONNX = errors.New("not an ONNX model")
	// ErrNotLoaded: no version of the model is loaded here yet.
	ErrNotLoaded = errors.New("no version loaded")
	// ErrLoadFailed: the version does not load or warm up on this peer.
	ErrLoadFailed = errors.New("does not load on this peer")
	// ErrShuttingDown: the peer is closing.
	ErrShuttingDown = errors.New("the peer is shutting down")
)

// Cache is the part of the result cache the lifecycle touches: results of
// a version it drops from disk go too.
type Cache interface {
	DropVersion(model, version string)
}

// Config assembles a Manager.
type Config struct {
	Registry  *models.Registry
	Artifacts *artifacts.Manager
	// Engine runs sessions; nil when onnxruntime is unavailable, and
	// EngineErr says why.
	Engine    *inference.Engine
	EngineErr error
	Pool      *inference.Pool
	// Cache, when set, forgets the results of versions removed from disk.
	Cache Cache
	// Now reads the mesh clock (HLC wall time, Unix nanoseconds): the
	// lag of a switch is measured against the activation's stamp.
	Now func() int64
	// Keep is how many verified versions of each model stay on disk (the
	// served one included). Default 2.
	Keep   int
	Logger *slog.Logger
}

// Serving is the version of a model this peer serves: the effective
// current version once it is verified (and loaded) here, and until then
// the last one that was.
type Serving struct {
	Version   string
	CID       string
	Since     time.Time
	LagSecond float64 // activation HLC → serving here
}

// Manager is the model lifecycle of one peer.
type Manager struct {
	cfg Config
	log *slog.Logger

	// ctx bounds background work (activations, pulls); wg counts it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// sem bounds concurrent activations and prefetches.
	sem chan struct{}

	mu      sync.Mutex // guards serving; held across an activation's check-and-switch
	serving map[string]Serving

	loads     singleflight.Group
	loadMu    sync.Mutex
	bad       map[string]string          // model@version → why it does not load here
	manifests map[string]models.Manifest // of loaded sessions, by CID

	loadFailures *prometheus.CounterVec
	gcWanted     chan struct{} // capacity 1: a GC run is wanted (gcSoon)

	// watchMu guards watchers (watch.go); a leaf lock, never held while
	// taking another.
	watchMu  sync.Mutex
	watchers map[chan struct{}]struct{}
}

// New returns a Manager; Start makes it follow the registry.
func New(cfg Config) *Manager {
	if cfg.Keep <= 0 {
		cfg.Keep = 2
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Manager{cfg: cfg, log: cfg.Logger, ctx: ctx, cancel: cancel, sem: make(chan struct{}, 4),
		serving: map[string]Serving{}, bad: map[string]string{}, manifests: map[string]models.Manifest{}, gcWanted: make(chan struct{}, 1),
		watchers: map[chan struct{}]struct{}{},
		loadFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_model_load_failures_total", Help: "Verified versions that failed to load or warm up here, by model.",
		}, []string{"model"}),
	}
}

// Collectors are the Manager's metrics, for the peer's registry.
func (l *Manager) Collectors() []prometheus.Collector {
	return []prometheus.Collector{l.loadFailures}
}

// Start follows changes (from Registry.Subscribe) until Close.
func (l *Manager) Start(changes <-chan models.Change) {
	l.wg.Add(2)
	go func() {
		defer l.wg.Done()
		l.run(changes)
	}()
	go func() {
		defer l.wg.Done()
		l.gcLoop()
	}()
}

// gcEvery spaces artifact GC runs: each reads every model's state and the
// artifact store, so a burst of activations (a rollout, a benchmark)
// triggers one run per interval rather than one per activation. Disk
// space is freed at most this much later.
const gcEvery = 2 * time.Second

// gcSoon asks for an artifact GC run; requests made while one waits or
// runs coalesce into the next.
func (l *Manager) gcSoon() {
	select {
	case l.gcWanted <- struct{}{}:
	default:
	}
}

func (l *Manager) gcLoop() {
	for {
		select {
		case <-l.ctx.Done():
			return
		case <-l.gcWanted:
		}
		if err := l.gc(l.ctx); err != nil && l.ctx.Err() == nil {
			l.log.Warn("artifact GC failed", "err", err)
		}
		select {
		case <-l.ctx.Done():
			return
		case <-time.After(gcEvery):
		}
	}
}

// Close stops background work and waits for it.
func (l *Manager) Close() {
	l.cancel()
	l.wg.Wait()
}

// Serving returns the version this peer serves for model.
func (l *Manager) Serving(model string) (Serving, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, ok := l.serving[model]
	return s, ok
}

// All returns what this peer serves, by model.
func (l *Manager) All() map[string]Serving {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.serving)
}

// ArtifactSpec is the artifact a manifest names.
func ArtifactSpec(m models.Manifest) (artifacts.Spec, error) {
	c, err := cid.Decode(m.CID)
	if err != nil {
		return artifacts.Spec{}, fmt.Errorf("manifest %s has a bad CID: %w", m.Ref(), err)
	}
	return artifacts.Spec{Ref: m.Ref(), CID: c, SHA256: m.SHA256, Size: m.Size}, nil
}

func (l *Manager) run(changes <-chan models.Change) {
	for {
		select {
		case <-l.ctx.Done():
			return
		case c := <-changes:
			// The registry's state shows the change already: watchers
			// read it now, and again when an activation switches what
			// this peer serves (commit).
			l.notify()
			switch {
			case c.Type == models.CurrentChanged:
				a := *c.Activation
				l.spawn(func() { l.activate(l.ctx, a) })
			case c.Type == models.VersionAdded && c.Manifest.Prefetch:
				m := *c.Manifest
				l.spawn(func() { l.Fetch(l.ctx, m) })
			}
		}
	}
}

// spawn runs f in the background, at most cap(sem) at once.
func (l *Manager) spawn(f func()) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		select {
		case l.sem <- struct{}{}:
		case <-l.ctx.Done():
			return
		}
		defer func() { <-l.sem }()
		f()
	}()
}

// Fetch makes m's artifact local and verified (prefetch); failures are
// logged.
func (l *Manager) Fetch(ctx context.Context, m models.Manifest) {
	spec, err := ArtifactSpec(m)
	if err != nil {
		return
	}
	if _, err := l.cfg.Artifacts.Ensure(ctx, spec); err != nil && ctx.Err() == nil {
		l.log.Warn("fetch failed", "ref", m.Ref(), "err", err)
	}
}

// Pull fetches m in the background (for up to an hour) and returns at
// once: a pull by hand, whose progress the artifact status reports.
func (l *Manager) Pull(m models.Manifest) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		ctx, cancel := context.WithTimeout(l.ctx, time.Hour)
		defer cancel()
		l.Fetch(ctx, m)
	}()
}
