// Package models is the replicated model registry: signed, immutable
// model-version manifests and the per-publisher current-version registers,
// stored as crdt records, and the rules that turn them into an effective
// state every peer computes the same way.
//
// Keys (all under /shoal/models/<model>/):
//
//	versions/<version>/<publisher-id>   a Manifest (immutable)
//	current/<publisher-id>              an Activation (single writer)
//
// go-ds-crdt would pick a winner by DAG height, which is not "latest", so
// every publisher writes its own keys and the registry decides: the
// effective current version is the valid, trusted activation with the
// largest (HLC, publisher); the manifest of a version is the valid, trusted
// one with the smallest (HLC, publisher) — first publication wins, later
// ones with other content are conflicts, shown and counted.
package models

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-mesh/shoal/crdt"
)

// Prefix is the key space of the registry.
const Prefix = "/shoal/models/"

// VersionKey and CurrentKey name the registry's records.
func VersionKey(model, version string, pub PublisherID) string {
	return Prefix + model + "/versions/" + version + "/" + string(pub)
}

// CurrentKey names one activation. Each activation gets a key of its own
// (its HLC is the last segment), so the set of activations only grows:
// re-broadcasting an old signed activation — a replay — can add nothing
// new and cannot overwrite a newer one, as it could if each publisher had
// a single register that go-ds-crdt resolves by DAG height.
func CurrentKey(model string, pub PublisherID, hlc crdt.HLC) string {
	return Prefix + model + "/current/" + string(pub) + "/" + hlcSegment(hlc)
}

func hlcSegment(h crdt.HLC) string { return fmt.Sprintf("%016x.%08x", uint64(h.Wall), h.Logical) }

// Config configures a Registry.
type Config struct {
	Replica *crdt.Replica
	// Publisher signs this peer's manifests and activations. Required.
	Publisher *Publisher
	// Trusted publishers besides this peer's own key.
	Trusted []PublisherID
	// MaxClockSkew bounds how far ahead of this peer's clock an
	// activation may be stamped and still count (ReasonClockSkew).
	// Default 1 minute, the replica's own bound; negative: no bound.
	MaxClockSkew time.Duration
	Logger       *slog.Logger
}

// ChangeType says what changed in a model.
type ChangeType int

const (
	// CurrentChanged: the effective current version of a model changed.
	CurrentChanged ChangeType = iota + 1
	// VersionAdded: a version became known (its manifest is valid).
	VersionAdded
)

// Change is a typed registry event.
type Change struct {
	Type    ChangeType
	Model   string
	Version string
	// Activation is set for CurrentChanged.
	Activation *Activation
	// Manifest is set for VersionAdded.
	Manifest *Manifest
}

// VersionState is one version of a model.
type VersionState struct {
	Manifest Manifest `json:"manifest"`
	// Conflicts are other valid publications of the same model@version
	// with other content; they lost to Manifest.
	Conflicts []Manifest `json:"conflicts,omitempty"`
}

// ModelState is the effective state of one model.
type ModelState struct {
	Name string `json:"name"`
	// Current is the winning activation, nil if none. Its version may be
	// unknown here yet (manifest not replicated): see CurrentKnown.
	Current      *Activation    `json:"current,omitempty"`
	CurrentKnown bool           `json:"current_known"`
	Activations  []Activation   `json:"activations"`
	Versions     []VersionState `json:"versions"`
}

// Version returns the state of one version.
func (s ModelState) Version(v string) (VersionState, bool) {
	for _, vs := range s.Versions {
		if vs.Manifest.Version == v {
			return vs, true
		}
	}
	return VersionState{}, false
}

// Why explains the effective current version in one sentence.
func (s ModelState) Why() string {
	if s.Current == nil {
		return "no trusted publisher has activated a version"
	}
	others := len(s.Activations) - 1
	if others == 0 {
		return fmt.Sprintf("%s is the only trusted activation (by %s at %s)", s.Current.Version, short(s.Current.Publisher), s.Current.HLC.Time().UTC().Format("2006-01-02T15:04:05.000Z"))
	}
	return fmt.Sprintf("%s has the largest (HLC, publisher) of %d trusted activations (by %s at %s)", s.Current.Version, others+1, short(s.Current.Publisher), s.Current.HLC.Time().UTC().Format("2006-01-02T15:04:05.000Z"))
}

// known reports whether the model exists: it has a version or an
// activation.
func (s ModelState) known() bool { return s.Current != nil || len(s.Versions) > 0 }

// unknown is what a read of s answers: nil, or ErrUnknownModel.
func (s ModelState) unknown() error {
	if s.known() {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrUnknownModel, s.Name)
}

func short(p PublisherID) string {
	s := string(p)
	if len(s) > 24 {
		return s[:24] + "…"
	}
	return s
}

// Registry reads and writes the model registry of one replica.
type Registry struct {
	r       *crdt.Replica
	pub     *Publisher
	tmu     sync.RWMutex
	trusted map[PublisherID]bool
	maxSkew time.Duration
	refresh chan struct{}
	log     *slog.Logger

	mu       sync.Mutex
	rejected map[string]string // record id → reason, each counted once
	counts   map[string]uint64
	last     map[string]ModelState
	subs     []chan Change

	cache  stateCache
	bodies checkedBodies
	mirror mirror // Run's copy of the records (mirror.go)
	// reads counts full reads of a model's or every model's records from
	// the store; a change Run follows costs none (TestRunFollowsChangesWithoutReading).
	reads atomic.Uint64
}

// New returns a registry over cfg.Replica. Call Run to follow changes.
func New(cfg Config) (*Registry, error) {
	if cfg.Replica == nil || cfg.Publisher == nil {
		return nil, errors.New("models: Config.Replica and Config.Publisher are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxClockSkew == 0 {
		cfg.MaxClockSkew = time.Minute
	}
	g := &Registry{
		r: cfg.Replica, pub: cfg.Publisher, maxSkew: cfg.MaxClockSkew, refresh: make(chan struct{}, 1), log: cfg.Logger.With("component", "registry"),
		trusted:  map[PublisherID]bool{cfg.Publisher.ID(): true},
		rejected: map[string]string{}, counts: map[string]uint64{}, last: map[string]ModelState{},
		bodies: newCheckedBodies(),
	}
	for _, t := range cfg.Trusted {
		_, id, err := ParsePublisherID(string(t))
		if err != nil {
			return nil, err
		}
		g.trusted[id] = true
	}
	return g, nil
}

// Publisher returns this peer's publisher identity.
func (g *Registry) Publisher() *Publisher { return g.pub }

// Trusted lists the trusted publisher ids.
func (g *Registry) Trusted() []PublisherID {
	g.tmu.RLock()
	defer g.tmu.RUnlock()
	var out []PublisherID
	for id := range g.trusted {
		out = append(out, id)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Subscribe returns a channel of changes. Subscribe before Run.
func (g *Registry) Subscribe() <-chan Change {
	ch := make(chan Change, 256)
	g.mu.Lock()
	g.subs = append(g.subs, ch)
	g.mu.Unlock()
	return ch
}

// SetTrusted replaces the trusted publishers (this peer's own key stays
// trusted) and has Run re-evaluate every model, so records of a publisher
// no longer trusted stop counting at once and those of a newly trusted
// one start to.
func (g *Registry) SetTrusted(ids []PublisherID) {
	set := map[PublisherID]bool{g.pub.ID(): true}
	for _, id := range ids {
		set[id] = true
	}
	g.tmu.Lock()
	g.trusted = set
	g.tmu.Unlock()
	g.cache.invalidate()
	select {
	case g.refresh <- struct{}{}:
	default:
	}
}

func (g *Registry) isTrusted(id PublisherID) bool {
	g.tmu.RLock()
	defer g.tmu.RUnlock()
	return g.trusted[id]
}

// reevaluateEvery re-reads every model even without a change, so an
// activation that was early (ReasonClockSkew) counts once the clock passes
// its stamp.
const reevaluateEvery = 30 * time.Second

// Run emits the initial state (a CurrentChanged and VersionAdded for every
// model, since hooks are not replayed after a restart) and then follows the
// replica until ctx ends. If the replica ends its subscription because Run
// fell behind (crdt.ErrSlowSubscriber), it subscribes again and then
// re-reads every model, as at start, so the changes it lost are emitted.
func (g *Registry) Run(ctx context.Context) {
	sub := g.r.Subscribe(Prefix, 256)
	defer func() { sub.Close() }() // the last subscription
	all := func() {
		gen := g.cache.generation()
		entries, err := g.list(ctx, Prefix)
		if err != nil {
			return
		}
		models := byModel(entries)
		g.mirror.load(models, gen)
		for _, st := range g.evaluateAll(models) {
			g.diff(st)
		}
	}
	all()
	tick := time.NewTicker(reevaluateEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-sub.Done():
			if ctx.Err() != nil || !errors.Is(sub.Err(), crdt.ErrSlowSubscriber) {
				return
			}
			// Subscribe before reading, so no change falls between.
			g.log.Warn("the registry fell behind the replicated state: reading it again", "err", sub.Err())
			sub = g.r.Subscribe(Prefix, 256)
			all()
		case <-tick.C:
			all()
		case <-g.refresh:
			all()
		case ev := <-sub.C():
			if model, ok := modelOf(ev.Key); ok {
				g.diff(g.evaluateChange(model, ev))
			}
		}
	}
}

// evaluateChange folds ev into the mirror and evaluates its model from
// it. When the replica has queued nothing since ev, that state is what a
// read would find now, and the state cache keeps it for the readers that
// follow the change (the lifecycle, watch streams, the API).
func (g *Registry) evaluateChange(model string, ev crdt.Event) ModelState {
	st := g.evaluate(model, g.mirror.apply(model, ev))
	if g.r.EventSeq() == ev.Seq {
		g.cache.fill(model, cacheTag{seq: ev.Seq, gen: g.mirror.gen, at: time.Now()}, st, st.unknown())
	}
	return st
}

// list reads every record under prefix from the store (counted in reads).
func (g *Registry) list(ctx context.Context, prefix string) ([]crdt.Entry, error) {
	g.reads.Add(1)
	return g.r.List(ctx, prefix)
}

// diff compares st with the last state seen and emits changes.
func (g *Registry) diff(st ModelState) {
	g.mu.Lock()
	prev, had := g.last[st.Name]
	g.last[st.Name] = st
	subs := append([]chan Change(nil), g.subs...)
	g.mu.Unlock()
	var out []Change
	for _, vs := range st.Versions {
		if !had {
			m := vs.Manifest
			out = append(out, Change{Type: VersionAdded, Model: st.Name, Version: m.Version, Manifest: &m})
			continue
		}
		if _, ok := prev.Version(vs.Manifest.Version); !ok {
			m := vs.Manifest
			out = append(out, Change{Type: VersionAdded, Model: st.Name, Version: m.Version, Manifest: &m})
		}
	}
	if st.Current != nil && st.CurrentKnown {
		if !had || prev.Current == nil || !prev.CurrentKnown || prev.Current.HLC != st.Current.HLC || prev.Current.Version != st.Current.Version {
			a := *st.Current
			out = append(out, Change{Type: CurrentChanged, Model: st.Name, Version: a.Version, Activation: &a})
		}
	}
	for _, c := range out {
		for _, ch := range subs {
			ch <- c
		}
	}
}

// Rejected returns counts of records kept out of the effective state, by
// reason.
func (g *Registry) Rejected() map[string]uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make(map[string]uint64, len(g.counts))
	for k, v := range g.counts {
		out[k] = v
	}
	return out
}

func (g *Registry) reject(e crdt.Entry, reason string, err error) {
	id := e.Key + "@" + e.Record.HLC.String()
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, seen := g.rejected[id]; seen {
		return
	}
	g.rejected[id] = reason
	g.counts[reason]++
	g.log.Warn("record kept out of the registry", "key", e.Key, "reason", reason, "err", err)
}

// Models returns the effective state of every model.
func (g *Registry) Models(ctx context.Context) ([]ModelState, error) {
	return g.cachedModels(ctx, g.readModels)
}

// readModels is Models without the cache (Run's periodic re-evaluation
// calls it, so the clock-dependent rules are applied afresh).
func (g *Registry) readModels(ctx context.Context) ([]ModelState, error) {
	entries, err := g.list(ctx, Prefix)
	if err != nil {
		return nil, err
	}
	return g.evaluateAll(byModel(entries)), nil
}

// evaluateAll evaluates every model of models that has a version or an
// activation, ordered by name.
func (g *Registry) evaluateAll(models map[string][]crdt.Entry) []ModelState {
	var out []ModelState
	for model, es := range models {
		st := g.evaluate(model, es)
		if st.known() {
			out = append(out, st)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// State returns the effective state of one model, or ErrUnknownModel.
func (g *Registry) State(ctx context.Context, model string) (ModelState, error) {
	if err := CheckName("model", model); err != nil {
		return ModelState{}, err
	}
	return g.cachedState(ctx, model, func(ctx context.Context) (ModelState, error) { return g.readState(ctx, model) })
}

// readState is State without the cache.
func (g *Registry) readState(ctx context.Context, model string) (ModelState, error) {
	entries, err := g.list(ctx, Prefix+model+"/")
	if err != nil {
		return ModelState{}, err
	}
	st := g.evaluate(model, entries)
	return st, st.unknown()
}

// Manifest returns the effective manifest of model@version.
func (g *Registry) Manifest(ctx context.Context, model, version string) (Manifest, error) {
	st, err := g.State(ctx, model)
	if err != nil {
		return Manifest{}, err
	}
	vs, ok := st.Version(version)
	if !ok {
		return Manifest{}, fmt.Errorf("%w: %s@%s", ErrUnknownVersion, model, version)
	}
	return vs.Manifest, nil
}

// manifestOf decodes a publication and checks it against its key and its
// signature (rejecting it, counted, if it fails); the trust and clock
// rules are the caller's. Bodies that passed are remembered (bodies).
func (g *Registry) manifestOf(model string, rest []string, e crdt.Entry) (Manifest, bool) {
	var m Manifest
	if g.bodies.get(e, &m) {
		return m, true
	}
	if e.Record.Kind != KindVersion || e.Record.DecodeBody(&m) != nil {
		g.reject(e, ReasonMalformed, errors.New("not a manifest"))
		return m, false
	}
	if m.Model != model || m.Version != rest[1] || string(m.Publisher) != rest[2] {
		g.reject(e, ReasonKeyMismatch, fmt.Errorf("manifest %s@%s by %s under %s", m.Model, m.Version, m.Publisher, e.Key))
		return m, false
	}
	if err := m.Verify(); err != nil {
		g.reject(e, ReasonBadSignature, err)
		return m, false
	}
	g.bodies.put(e, m)
	return m, true
}

// activationOf is manifestOf for an activation record.
func (g *Registry) activationOf(model string, rest []string, e crdt.Entry) (Activation, bool) {
	var a Activation
	if g.bodies.get(e, &a) {
		return a, true
	}
	if e.Record.Kind != KindCurrent || e.Record.DecodeBody(&a) != nil {
		g.reject(e, ReasonMalformed, errors.New("not an activation"))
		return a, false
	}
	if a.Model != model || string(a.Publisher) != rest[1] || (len(rest) == 3 && rest[2] != hlcSegment(a.HLC)) {
		g.reject(e, ReasonKeyMismatch, fmt.Errorf("activation of %s by %s under %s", a.Model, a.Publisher, e.Key))
		return a, false
	}
	if err := a.Verify(); err != nil {
		g.reject(e, ReasonBadSignature, err)
		return a, false
	}
	g.bodies.put(e, a)
	return a, true
}

// evaluate applies the registry's rules to the raw entries of one model.
func (g *Registry) evaluate(model string, entries []crdt.Entry) ModelState {
	st := ModelState{Name: model, Activations: []Activation{}, Versions: []VersionState{}}
	versions := map[string][]Manifest{}
	latest := map[PublisherID]Activation{}
	for _, e := range entries {
		rest := strings.Split(strings.TrimPrefix(e.Key, Prefix+model+"/"), "/")
		switch {
		case len(rest) == 3 && rest[0] == "versions":
			m, ok := g.manifestOf(model, rest, e)
			if !ok {
				continue
			}
			if !g.isTrusted(m.Publisher) {
				g.reject(e, ReasonUntrusted, fmt.Errorf("publisher %s", m.Publisher))
				continue
			}
			versions[m.Version] = append(versions[m.Version], m)
		case (len(rest) == 2 || len(rest) == 3) && rest[0] == "current":
			// Two segments: the single per-publisher register of earlier
			// releases, still honoured; three: one key per activation.
			a, ok := g.activationOf(model, rest, e)
			if !ok {
				continue
			}
			if !g.isTrusted(a.Publisher) {
				g.reject(e, ReasonUntrusted, fmt.Errorf("publisher %s", a.Publisher))
				continue
			}
			if ahead := time.Duration(a.HLC.Wall - g.r.Clock().Peek().Wall); g.maxSkew > 0 && ahead > g.maxSkew {
				g.reject(e, ReasonClockSkew, fmt.Errorf("stamped %v ahead of this peer's clock (bound %v)", ahead.Round(time.Second), g.maxSkew))
				continue
			}
			// Only each publisher's newest activation counts.
			if prev, ok := latest[a.Publisher]; !ok || prev.HLC.Compare(a.HLC) < 0 {
				latest[a.Publisher] = a
			}
		default:
			g.reject(e, ReasonMalformed, errors.New("unexpected key"))
		}
	}
	for _, a := range latest {
		st.Activations = append(st.Activations, a)
	}
	for _, ms := range versions {
		sort.Slice(ms, func(i, j int) bool { return order(ms[i].HLC, ms[i].Publisher, ms[j].HLC, ms[j].Publisher) < 0 })
		vs := VersionState{Manifest: ms[0]}
		for _, m := range ms[1:] {
			if m.CID != ms[0].CID || m.SHA256 != ms[0].SHA256 {
				vs.Conflicts = append(vs.Conflicts, m)
			}
		}
		st.Versions = append(st.Versions, vs)
	}
	sort.Slice(st.Versions, func(i, j int) bool {
		a, b := st.Versions[i].Manifest, st.Versions[j].Manifest
		return order(a.HLC, a.Publisher, b.HLC, b.Publisher) < 0
	})
	// Largest (HLC, publisher) first.
	sort.Slice(st.Activations, func(i, j int) bool {
		a, b := st.Activations[i], st.Activations[j]
		return order(a.HLC, a.Publisher, b.HLC, b.Publisher) > 0
	})
	if len(st.Activations) > 0 {
		cur := st.Activations[0]
		st.Current = &cur
		_, st.CurrentKnown = versions[cur.Version]
	}
	return st
}

func order(h1 crdt.HLC, p1 PublisherID, h2 crdt.HLC, p2 PublisherID) int {
	if c := h1.Compare(h2); c != 0 {
		return c
	}
	return strings.Compare(string(p1), string(p2))
}

// Publish validates (Manifest.Validate), signs and writes a manifest.
// Publishing the same content again is a no-op; other content under an
// existing model@version is ErrDuplicate and changes nothing.
func (g *Registry) Publish(ctx context.Context, m Manifest) (Manifest, crdt.Write, error) {
	if err := m.Validate(); err != nil {
		return m, crdt.Write{}, err
	}
	if existing, err := g.Manifest(ctx, m.Model, m.Version); err == nil {
		if existing.CID == m.CID && existing.SHA256 == m.SHA256 {
			return existing, g.r.Position(ctx), nil
		}
		return existing, crdt.Write{}, fmt.Errorf("%w: %s@%s is %s (sha256 %s)", ErrDuplicate, m.Model, m.Version, existing.CID, existing.SHA256)
	}
	m.HLC = g.r.Clock().Now()
	m.Sign(g.pub)
	w, err := g.r.Put(ctx, VersionKey(m.Model, m.Version, m.Publisher), KindVersion, m)
	return m, w, err
}

// Activate makes version the current version of model, as far as this
// publisher is concerned. The version must be known here.
func (g *Registry) Activate(ctx context.Context, model, version string) (Activation, crdt.Write, error) {
	st, err := g.State(ctx, model)
	if err != nil {
		return Activation{}, crdt.Write{}, err
	}
	if _, ok := st.Version(version); !ok {
		return Activation{}, crdt.Write{}, fmt.Errorf("%w: %s@%s", ErrUnknownVersion, model, version)
	}
	a := Activation{Model: model, Version: version, HLC: g.r.Clock().Now()}
	if st.Current != nil {
		a.Previous = st.Current.Version
		if a.Previous == version {
			a.Previous = st.Current.Previous
		}
	}
	a.Sign(g.pub)
	w, err := g.r.Put(ctx, CurrentKey(model, a.Publisher, a.HLC), KindCurrent, a)
	return a, w, err
}

// Rollback activates the version that was effective before the current
// activation.
func (g *Registry) Rollback(ctx context.Context, model string) (Activation, crdt.Write, error) {
	st, err := g.State(ctx, model)
	if err != nil {
		return Activation{}, crdt.Write{}, err
	}
	if st.Current == nil || st.Current.Previous == "" {
		return Activation{}, crdt.Write{}, fmt.Errorf("%w: %s", ErrNoPrevious, model)
	}
	return g.Activate(ctx, model, st.Current.Previous)
}
