package lifecycle

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"

	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/inference"
)

// Load creates and warms up a session for a verified ONNX artifact (one
// load per version at a time). A version that does not load or warm up is
// remembered as bad here, with onnxruntime's reason, and the error wraps
// ErrLoadFailed.
func (l *Manager) Load(ctx context.Context, m models.Manifest) (*inference.Session, error) {
	if l.cfg.Engine == nil {
		return nil, fmt.Errorf("%w: %v", ErrInferenceOff, l.cfg.EngineErr)
	}
	v, err, _ := l.loads.Do(m.Ref(), func() (any, error) { return l.load(ctx, m) })
	if err != nil {
		return nil, err
	}
	return v.(*inference.Session), nil
}

func (l *Manager) load(ctx context.Context, m models.Manifest) (*inference.Session, error) {
	data, err := l.ReadArtifact(ctx, m, -1)
	if err != nil {
		return nil, err
	}
	var warm *inference.InferRequest
	if len(m.Warmup) > 0 {
		warm = &inference.InferRequest{}
		if err := json.Unmarshal(m.Warmup, warm); err != nil {
			return nil, l.markBad(m, fmt.Errorf("%w: %s: the manifest's warm-up request is not OIP v2 JSON: %v", inference.ErrWarmup, m.Ref(), err))
		}
	}
	l.loadMu.Lock()
	l.manifests[m.CID] = m
	l.loadMu.Unlock()
	s, err := l.cfg.Engine.Load(ctx, inference.Ref{Model: m.Model, Version: m.Version, CID: m.CID}, data, warm)
	switch {
	case err == nil:
		return s, nil
	case doesNotLoad(ctx, err):
		return nil, l.markBad(m, err)
	case ctx.Err() != nil:
		// Not the version's fault: the caller's time ran out (a request's
		// Shoal-Timeout while the session warmed up). The next caller
		// loads it again.
		return nil, fmt.Errorf("loading %s: %w", m.Ref(), ctx.Err())
	}
	return nil, err
}

// doesNotLoad reports whether err, from Engine.Load under ctx, says the
// version cannot be served here — a verdict worth remembering — rather
// than that the load was cut short.
func doesNotLoad(ctx context.Context, err error) bool {
	return ctx.Err() == nil && (errors.Is(err, inference.ErrLoad) || errors.Is(err, inference.ErrWarmup))
}

func (l *Manager) markBad(m models.Manifest, err error) error {
	l.loadMu.Lock()
	l.bad[m.Ref()] = err.Error()
	l.loadMu.Unlock()
	l.loadFailures.WithLabelValues(m.Model).Inc()
	prev, _ := l.Serving(m.Model)
	l.log.Error("model version marked bad: not served here", "ref", m.Ref(), "reason", err.Error(), "still_serving", prev.Version)
	return fmt.Errorf("%w: %s: %w", ErrLoadFailed, m.Ref(), err)
}

// BadReason says why model@version does not load here ("" if it does).
func (l *Manager) BadReason(ref string) string {
	l.loadMu.Lock()
	defer l.loadMu.Unlock()
	return l.bad[ref]
}

// Bad lists the versions that do not load here, with their reasons.
func (l *Manager) Bad() map[string]string {
	l.loadMu.Lock()
	defer l.loadMu.Unlock()
	return maps.Clone(l.bad)
}

// ReadArtifact fetches (within ctx) and reads a version's artifact, at
// most limit bytes when limit ≥ 0.
func (l *Manager) ReadArtifact(ctx context.Context, m models.Manifest, limit int64) ([]byte, error) {
	rd, err := l.open(ctx, m, ctx)
	if err != nil {
		return nil, err
	}
	defer rd.Close()
	var r io.Reader = rd
	if limit >= 0 {
		r = io.LimitReader(rd, limit)
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", m.Ref(), err)
	}
	return data, nil
}

// open makes m's artifact local and verified within ctx, then opens it
// for reading within read.
func (l *Manager) open(ctx context.Context, m models.Manifest, read context.Context) (io.ReadCloser, error) {
	spec, err := ArtifactSpec(m)
	if err != nil {
		return nil, err
	}
	if _, err := l.cfg.Artifacts.Ensure(ctx, spec); err != nil {
		return nil, err
	}
	return l.cfg.Artifacts.Open(read, spec)
}

// Manifest returns model@version's manifest from the registry.
func (l *Manager) Manifest(ctx context.Context, model, version string) (models.Manifest, error) {
	return l.cfg.Registry.Manifest(ctx, model, version)
}

// Session acquires the session that answers model[@version] with its
// manifest; the caller must Release it. An unpinned request gets the
// current session. A pinned version that is known but not loaded is
// fetched and loaded within ctx.
func (l *Manager) Session(ctx context.Context, model, version string) (*inference.Session, models.Manifest, error) {
	if l.cfg.Engine == nil {
		return nil, models.Manifest{}, fmt.Errorf("%w: %v", ErrInferenceOff, l.cfg.EngineErr)
	}
	// Fast path: the version is loaded (the usual case).
	if s, err := l.cfg.Pool.Acquire(model, version); err == nil {
		l.loadMu.Lock()
		m, ok := l.manifests[s.CID]
		l.loadMu.Unlock()
		if ok {
			return s, m, nil
		}
		s.Release()
	}
	if version == "" {
		return l.currentSession(ctx, model)
	}
	return l.pinnedSession(ctx, model, version)
}

func (l *Manager) currentSession(ctx context.Context, model string) (*inference.Session, models.Manifest, error) {
	st, err := l.cfg.Registry.State(ctx, model)
	if err != nil {
		return nil, models.Manifest{}, err
	}
	if s, err := l.cfg.Pool.Acquire(model, ""); err == nil {
		m, _ := st.Version(s.Version)
		return s, m.Manifest, nil
	}
	if st.Current != nil {
		if vs, ok := st.Version(st.Current.Version); ok && !vs.Manifest.IsONNX() {
			return nil, models.Manifest{}, notONNX(vs.Manifest)
		}
		if reason := l.BadReason(model + "@" + st.Current.Version); reason != "" {
			return nil, models.Manifest{}, fmt.Errorf("%w: the current version %s@%s does not load on this peer (%s) and no earlier version is loaded",
				ErrNotLoaded, model, st.Current.Version, reason)
		}
	}
	return nil, models.Manifest{}, fmt.Errorf("%w: no verified version of %s is loaded on this peer yet", ErrNotLoaded, model)
}

func (l *Manager) pinnedSession(ctx context.Context, model, version string) (*inference.Session, models.Manifest, error) {
	m, err := l.cfg.Registry.Manifest(ctx, model, version)
	if err != nil {
		return nil, m, err
	}
	if !m.IsONNX() {
		return nil, m, notONNX(m)
	}
	for {
		if s, err := l.cfg.Pool.Acquire(model, version); err == nil {
			return s, m, nil
		}
		if reason := l.BadReason(m.Ref()); reason != "" {
			return nil, m, fmt.Errorf("%w: %s: %s", ErrLoadFailed, m.Ref(), reason)
		}
		s, err := l.Load(ctx, m)
		if err != nil {
			return nil, m, err
		}
		if l.cfg.Pool.Closed() {
			s.Retire()
			return nil, m, ErrShuttingDown
		}
		l.cfg.Pool.Add(s)
	}
}

func notONNX(m models.Manifest) error {
	return fmt.Errorf("%w: %s is a %s artifact (push it with media type %s to serve it)", ErrNotONNX, m.Ref(), m.MediaType, models.MediaTypeONNX)
}

// Loaded reports whether model@version has a session loaded now.
func (l *Manager) Loaded(model, version string) bool { return l.cfg.Pool.Has(model, version) }
