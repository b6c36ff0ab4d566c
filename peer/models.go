package peer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	cid "github.com/ipfs/go-cid"

	"github.com/shoal-mesh/shoal/crdt/collections"
	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/inference"
	"github.com/shoal-mesh/shoal/store/artifacts"
)

// serving is the version of a model this peer serves: the effective
// current version once it is verified here, and until then the last one
// that was.
type serving struct {
	Version   string
	CID       string
	Since     time.Time
	LagSecond float64 // activation HLC → serving here
}

// lifecycle follows the registry and keeps the effective current version
// of every model fetched, verified and served (design §3).
type lifecycle struct {
	n    *Node
	keep int

	mu      sync.Mutex
	serving map[string]serving
	sem     chan struct{}
}

func newLifecycle(n *Node, keep int) *lifecycle {
	return &lifecycle{n: n, keep: keep, serving: map[string]serving{}, sem: make(chan struct{}, 4)}
}

func specOf(m models.Manifest) (artifacts.Spec, error) {
	c, err := cid.Decode(m.CID)
	if err != nil {
		return artifacts.Spec{}, fmt.Errorf("manifest %s has a bad CID: %w", m.Ref(), err)
	}
	return artifacts.Spec{Ref: m.Ref(), CID: c, SHA256: m.SHA256, Size: m.Size}, nil
}

// Serving returns the version of model this peer serves, if any.
func (n *Node) Serving(model string) (string, bool) {
	s, ok := n.life.Serving(model)
	return s.Version, ok
}

// Serving returns the version this peer serves for model.
func (l *lifecycle) Serving(model string) (serving, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, ok := l.serving[model]
	return s, ok
}

func (l *lifecycle) all() map[string]serving {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]serving, len(l.serving))
	for k, v := range l.serving {
		out[k] = v
	}
	return out
}

func (l *lifecycle) run(ctx context.Context, changes <-chan models.Change) {
	for {
		select {
		case <-ctx.Done():
			return
		case c := <-changes:
			switch {
			case c.Type == models.CurrentChanged:
				l.spawn(ctx, func() { l.activate(ctx, *c.Activation) })
			case c.Type == models.VersionAdded && c.Manifest.Prefetch:
				m := *c.Manifest
				l.spawn(ctx, func() { l.prefetch(ctx, m) })
			}
		}
	}
}

func (l *lifecycle) spawn(ctx context.Context, f func()) {
	l.n.wg.Add(1)
	go func() {
		defer l.n.wg.Done()
		select {
		case l.sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		defer func() { <-l.sem }()
		f()
	}()
}

func (l *lifecycle) prefetch(ctx context.Context, m models.Manifest) {
	spec, err := specOf(m)
	if err != nil {
		return
	}
	if _, err := l.n.artifacts.Ensure(ctx, spec); err != nil && ctx.Err() == nil {
		l.n.log.Warn("prefetch failed", "ref", m.Ref(), "err", err)
	}
}

// activate brings the activated version into service on this peer. A
// version that fails verification is left marked bad, and the last verified
// version keeps serving.
func (l *lifecycle) activate(ctx context.Context, a models.Activation) {
	m, err := l.n.registry.Manifest(ctx, a.Model, a.Version)
	if err != nil {
		l.n.log.Warn("activation names an unknown version", "model", a.Model, "version", a.Version, "err", err)
		return
	}
	spec, err := specOf(m)
	if err != nil {
		l.n.log.Error("cannot activate", "ref", m.Ref(), "err", err)
		return
	}
	for attempt := 0; ; attempt++ {
		_, err = l.n.artifacts.Ensure(ctx, spec)
		if err == nil || errors.Is(err, artifacts.ErrBad) || ctx.Err() != nil {
			break
		}
		// Nobody had the blocks yet (or the fetch timed out): try again
		// while this activation is still the effective one.
		l.n.log.Warn("artifact fetch incomplete, retrying", "ref", m.Ref(), "attempt", attempt+1, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(min(time.Duration(attempt+1)*2*time.Second, 30*time.Second)):
		}
		if st, serr := l.n.registry.State(ctx, a.Model); serr != nil || st.Current == nil || st.Current.HLC != a.HLC {
			return
		}
	}
	if err != nil {
		if ctx.Err() == nil {
			prev, _ := l.Serving(a.Model)
			l.n.log.Error("activated version not served", "ref", m.Ref(), "err", err, "still_serving", prev.Version)
		}
		return
	}
	// An ONNX model goes live only as a warmed-up session (design §3); a
	// version that does not load is marked bad and the previous one keeps
	// serving.
	inf := l.n.inf
	loadable := m.IsONNX() && inf.engine != nil
	var sess *inference.Session
	if loadable {
		if ref, ok := inf.pool.Current(a.Model); (!ok || ref.Version != a.Version) && !inf.pool.Has(a.Model, a.Version) {
			if sess, err = l.n.loadSession(ctx, m); err != nil {
				if ctx.Err() == nil && !errors.Is(err, inference.ErrLoad) && !errors.Is(err, inference.ErrWarmup) {
					l.n.log.Error("activated version not loaded", "ref", m.Ref(), "err", err)
				}
				return
			}
		}
	}
	// Serve it only if it is still the effective current version: a newer
	// activation may have won while this one was fetching. The check and
	// the switch happen under one lock, so of two activations finishing
	// together the one that reads the newer state decides last.
	l.mu.Lock()
	st, err := l.n.registry.State(ctx, a.Model)
	if err != nil || st.Current == nil || st.Current.Version != a.Version {
		l.mu.Unlock()
		if sess != nil {
			sess.Retire()
		}
		return
	}
	if loadable {
		switch {
		case sess != nil:
			inf.pool.Swap(sess)
		case inf.pool.Promote(a.Model, a.Version):
		default:
			if ref, ok := inf.pool.Current(a.Model); !ok || ref.Version != a.Version {
				// The pinned session was evicted in between: load again.
				l.mu.Unlock()
				l.activate(ctx, a)
				return
			}
		}
	}
	lag := max(time.Duration(l.n.replica.Clock().Peek().Wall-st.Current.HLC.Wall).Seconds(), 0)
	prev := l.serving[a.Model]
	if prev.Version != a.Version {
		l.serving[a.Model] = serving{Version: a.Version, CID: m.CID, Since: time.Now(), LagSecond: lag}
	}
	l.mu.Unlock()
	if prev.Version != a.Version {
		l.n.log.Info("serving model version", "model", a.Model, "version", a.Version, "previous", prev.Version, "lag_seconds", lag)
	}
	if err := l.gc(ctx); err != nil {
		l.n.log.Warn("artifact GC failed", "err", err)
	}
}

// gc deletes verified versions this peer no longer needs. Per model it
// keeps the version it serves, the effective current version, every
// version published after the served one (candidates for the next switch,
// and possibly the mesh's only copy), and the keep-1 newest versions
// published before it (rollback targets). Versions are ordered by their
// manifests' HLC, so every peer keeps the same ones.
func (l *lifecycle) gc(ctx context.Context) error {
	all, err := l.n.artifacts.All(ctx)
	if err != nil {
		return err
	}
	local := map[string]artifacts.Status{}
	for _, st := range all {
		if st.State == artifacts.StateVerified {
			local[st.Ref] = st
		}
	}
	servingNow := l.all()
	states, err := l.n.registry.Models(ctx)
	if err != nil {
		return err
	}
	var keep []cid.Cid
	var drop []artifacts.Spec
	for _, st := range states {
		served := servingNow[st.Name].Version
		servedAt := -1
		for i, vs := range st.Versions { // oldest first
			if vs.Manifest.Version == served {
				servedAt = i
			}
		}
		older := 0
		for i := len(st.Versions) - 1; i >= 0; i-- {
			m := st.Versions[i].Manifest
			ls, ok := local[m.Ref()]
			if !ok || ls.CID != m.CID {
				continue
			}
			c, err := cid.Decode(m.CID)
			if err != nil {
				continue
			}
			isCurrent := st.Current != nil && st.Current.Version == m.Version
			switch {
			case servedAt < 0 || i >= servedAt || isCurrent:
				keep = append(keep, c)
			case older < l.keep-1:
				older++
				keep = append(keep, c)
			default:
				drop = append(drop, artifacts.Spec{Ref: m.Ref(), CID: c})
			}
		}
	}
	if len(drop) == 0 {
		return nil
	}
	for _, d := range drop {
		if model, version, ok := strings.Cut(d.Ref, "@"); ok {
			l.n.inf.pool.Drop(model, version)
			if l.n.inf.cache != nil {
				l.n.inf.cache.DropVersion(model, version)
			}
		}
	}
	_, err = l.n.artifacts.Remove(ctx, drop, keep)
	return err
}

// DefaultModel is a model a peer publishes (and activates) by itself when
// the mesh has none of that name: the out-of-the-box demo that makes a
// fresh `shoal run` answer inference requests.
type DefaultModel struct {
	Name    string
	Version string
	Path    string // the artifact, or
	Data    []byte // its bytes
	// MediaType defaults to models.MediaTypeONNX.
	MediaType string
	// NoActivate publishes without activating (companion artifacts).
	NoActivate bool
}

// DemoRAG is the retrieval demo a fresh peer sets up: an embedder with its
// tokenizer and a small collection, unless the mesh already has them.
type DemoRAG struct {
	Embedder   DefaultModel
	Tokenizer  DefaultModel
	Collection string
	Docs       []DocRequest
}

// waitSynced waits (bounded) for the first sync with the mesh: a new peer
// must not publish defaults over a fleet that already moved on.
func (n *Node) waitSynced(ctx context.Context) {
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		st := n.replica.Staleness()
		connected := len(n.host.Network().Peers()) > 0
		if time.Since(n.started) > 3*time.Second && !connected {
			return // alone: nothing to sync with
		}
		reachable := 0
		for _, p := range st.Peers {
			if p.Reachable {
				reachable++
			}
		}
		if connected && reachable > 0 && st.Seconds < 2 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// publishDefault publishes (and activates) d unless the mesh knows a
// version of d.Name. It reports whether d is now available.
func (n *Node) publishDefault(ctx context.Context, d DefaultModel) bool {
	if st, err := n.registry.State(ctx, d.Name); err == nil && len(st.Versions) > 0 {
		n.log.Info("default model already in the mesh; not publishing it", "model", d.Name)
		return true
	}
	var r io.Reader = bytes.NewReader(d.Data)
	if d.Path != "" {
		f, err := os.Open(d.Path)
		if err != nil {
			n.log.Warn("default model unavailable", "path", d.Path, "err", err)
			return false
		}
		defer f.Close()
		r = f
	}
	if d.MediaType == "" {
		d.MediaType = models.MediaTypeONNX
	}
	c, sum, size, err := n.artifacts.Import(ctx, r)
	if err != nil {
		n.log.Error("default model import failed", "model", d.Name, "err", err)
		return false
	}
	m, _, err := n.registry.Publish(ctx, models.Manifest{Model: d.Name, Version: d.Version, CID: c.String(), SHA256: sum, Size: size, MediaType: d.MediaType})
	if err != nil {
		n.log.Error("default model publish failed", "model", d.Name, "err", err)
		return false
	}
	if err := n.artifacts.MarkVerified(ctx, artifacts.Spec{Ref: m.Ref(), CID: c, SHA256: sum, Size: size}); err != nil {
		n.log.Error("default model import failed", "model", d.Name, "err", err)
		return false
	}
	if !d.NoActivate {
		if _, _, err := n.registry.Activate(ctx, d.Name, d.Version); err != nil {
			n.log.Error("default model activation failed", "model", d.Name, "err", err)
			return false
		}
	}
	n.log.Info("published the default model", "model", d.Name, "version", d.Version, "activated", !d.NoActivate)
	return true
}

// publishDefaults sets up the configured defaults once synced.
func (n *Node) publishDefaults(ctx context.Context) {
	n.waitSynced(ctx)
	if d := n.cfg.DefaultModel; d != nil {
		n.publishDefault(ctx, *d)
	}
	demo := n.cfg.DemoRAG
	if demo == nil {
		return
	}
	if !n.publishDefault(ctx, demo.Embedder) || !n.publishDefault(ctx, demo.Tokenizer) {
		return
	}
	store := n.rag.m.Store()
	if _, err := store.Collection(ctx, demo.Collection); err == nil {
		return
	}
	ref := demo.Embedder.Name + "@" + demo.Embedder.Version
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	vecs, _, _, err := n.embed(wctx, ref, []string{"dimension probe"})
	if err != nil {
		n.log.Error("demo collection: embedder unavailable", "embedder", ref, "err", err)
		return
	}
	if _, _, err := store.CreateCollection(wctx, collections.Spec{Name: demo.Collection, Embedder: ref, Dimension: len(vecs[0]), Metric: collections.MetricCosine}); err != nil {
		n.log.Error("demo collection", "err", err)
		return
	}
	docs, err := n.prepareDocs(wctx, demo.Collection, demo.Docs)
	if err == nil {
		_, err = store.PutDocs(wctx, demo.Collection, docs)
	}
	if err != nil {
		n.log.Error("demo collection documents", "err", err)
		return
	}
	n.log.Info("created the demo collection", "collection", demo.Collection, "documents", len(docs), "embedder", ref)
}
