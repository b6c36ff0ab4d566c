package rag

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/crdt"
	"github.com/shoal-mesh/shoal/crdt/collections"
)

// Manager keeps one Index per collection in step with the replicated
// documents: it rebuilds every index from the stored records on start
// (CRDT hooks are not replayed), then applies document events as they
// arrive. Queries read the indexes; nothing here embeds documents — their
// vectors come with them.
type Manager struct {
	store *collections.Store
	log   *slog.Logger

	mu      sync.RWMutex
	indexes map[string]*collectionIndex
	ready   chan struct{}

	statsMu sync.Mutex
	stats   Stats

	replica *crdt.Replica
	sub     *crdt.Subscription
	applied atomic.Uint64 // Seq of the last event handled

	building sync.Map // collection → *buildProgress, while its index is built

	// indexDir, when set, is where graphs are saved at shutdown and
	// reopened at start (see persist.go); space is asked first whether a
	// save fits on the disk.
	indexDir string
	space    func(need int64) error
	// builds counts the background graph builds, for Wait.
	builds sync.WaitGroup
}

type buildProgress struct {
	total   int
	done    atomic.Int64
	started time.Time
}

// Build is the progress of one index being built from the store.
type Build struct {
	Collection string    `json:"collection"`
	Done       int64     `json:"done"`
	Total      int64     `json:"total"`
	StartedAt  time.Time `json:"started_at"`
}

// Building lists the indexes being built now (at start-up every
// collection's index is rebuilt from Badger).
func (m *Manager) Building() []Build {
	var out []Build
	m.building.Range(func(k, v any) bool {
		p := v.(*buildProgress)
		out = append(out, Build{Collection: k.(string), Done: p.done.Load(), Total: int64(p.total), StartedAt: p.started})
		return true
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Collection < out[j].Collection })
	return out
}

// collectionIndex is one collection's index and the metadata filters read.
type collectionIndex struct {
	spec    collections.Spec
	index   *Index
	mu      sync.RWMutex
	meta    map[string]map[string]string
	updated time.Time // when the last event was applied
	applied crdt.HLC  // newest document HLC applied
}

// Stats are the manager's counters (metrics).
type Stats struct {
	Applied      uint64
	Rebuilds     uint64
	RebuildTime  time.Duration
	UpdateTime   time.Duration // total time applying events
	QueryCount   uint64
	QueryTime    time.Duration
	BadDocuments uint64
	// Graphs by how a collection's graph came to be at start-up: loaded
	// from its save, or built because the save was absent, stale or torn.
	GraphsLoaded, GraphsBuilt uint64
}

// NewManager returns a manager; call Run.
func NewManager(r *crdt.Replica, log *slog.Logger) *Manager {
	return &Manager{store: collections.NewStore(r), replica: r, log: log, indexes: map[string]*collectionIndex{}, ready: make(chan struct{})}
}

// Pending estimates the replicated changes not yet reflected in the
// indexes: changes the replica has not dispatched yet, plus one if the
// manager has not handled the last one it was sent.
func (m *Manager) Pending() uint64 {
	seq, done := m.replica.EventSeq(), m.replica.Dispatched()
	p := seq - min(done, seq)
	if m.sub != nil && m.sub.Delivered() > m.applied.Load() {
		p++
	}
	return p
}

// PersistIndexes saves every graph under dir when Run ends and reopens
// them at start instead of building them again; space (optional) is asked
// first whether a save of so many bytes fits. Call before Run.
func (m *Manager) PersistIndexes(dir string, space func(need int64) error) {
	m.indexDir, m.space = dir, space
}

// Store returns the collections store the manager reads.
func (m *Manager) Store() *collections.Store { return m.store }

// Subscribe creates the manager's event subscription; call it before
// writing anything, then Run.
func (m *Manager) Subscribe() *crdt.Subscription {
	m.sub = m.replica.Subscribe(collections.Prefix+"/", 1024)
	return m.sub
}

// CaughtUp waits until every state change the replica had queued when it
// was called is reflected in the indexes: after a write, or after a
// Shoal-After token's heads arrived, queries see those documents.
func (m *Manager) CaughtUp(ctx context.Context) error {
	target := m.replica.EventSeq()
	for {
		select {
		case <-m.ready:
			if m.replica.Dispatched() >= target && m.sub.Delivered() <= m.applied.Load() {
				return nil
			}
		default:
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the retrieval index has not caught up with the replicated state: %w", ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// Ready is closed once the start-up rebuild is done.
func (m *Manager) Ready() <-chan struct{} { return m.ready }

// Run rebuilds the indexes, then follows sub (events under
// collections.Prefix) until ctx ends.
func (m *Manager) Run(ctx context.Context, sub *crdt.Subscription) {
	defer sub.Close()
	start := time.Now()
	specs, err := m.store.Collections(ctx)
	if err != nil {
		m.log.Error("listing collections", "err", err)
	}
	total := 0
	for _, spec := range specs {
		total += m.rebuild(ctx, spec)
	}
	m.statsMu.Lock()
	m.stats.Rebuilds++
	m.stats.RebuildTime += time.Since(start)
	m.statsMu.Unlock()
	if len(specs) > 0 {
		m.log.Info("retrieval indexes built", "collections", len(specs), "documents", total, "seconds", time.Since(start).Seconds())
	}
	close(m.ready)
	defer m.saveAll()
	for {
		select {
		case <-ctx.Done():
			return
		case <-sub.Done():
			return
		case ev := <-sub.C():
			m.apply(ctx, ev)
			m.applied.Store(ev.Seq)
		}
	}
}

// rebuild loads one collection's documents into a fresh index, logging
// progress for large ones.
func (m *Manager) rebuild(ctx context.Context, spec collections.Spec) int {
	ci := &collectionIndex{spec: spec, index: NewIndex(spec.Dimension, spec.Metric), meta: map[string]map[string]string{}}
	docs, err := m.store.Docs(ctx, spec.Name)
	if err != nil {
		m.log.Error("reading documents", "collection", spec.Name, "err", err)
	}
	prog := &buildProgress{total: len(docs), started: time.Now().UTC()}
	m.building.Store(spec.Name, prog)
	last := time.Now()
	ci.index.bulk = true // vectors first; the graph is reopened or built after
	for i, d := range docs {
		m.addDoc(ci, d)
		prog.done.Store(int64(i + 1))
		if time.Since(last) > 2*time.Second {
			last = time.Now()
			m.log.Info("reading retrieval documents", "collection", spec.Name, "done", i+1, "of", len(docs))
		}
	}
	built := m.reopenGraph(ci)
	ci.updated = time.Now()
	m.mu.Lock()
	m.indexes[spec.Name] = ci
	m.mu.Unlock()
	m.building.Delete(spec.Name)
	if !built {
		m.buildInBackground(ctx, ci)
	}
	return len(docs)
}

// reopenGraph installs the collection's saved graph if it is of exactly
// these vectors, and reports whether it did. A collection too small for a
// graph needs none.
func (m *Manager) reopenGraph(ci *collectionIndex) bool {
	if ci.index.Len() < ci.index.ExactBelow {
		ci.index.Rebuild() // small: builds at once, and searches are exact anyway
		return true
	}
	if m.indexDir == "" {
		return false
	}
	err := ci.index.Load(m.indexDir, ci.spec.Name)
	switch {
	case err == nil:
		m.count(func(s *Stats) { s.GraphsLoaded++ })
		m.log.Info("retrieval index reopened", "collection", ci.spec.Name, "documents", ci.index.Len())
		return true
	case errors.Is(err, os.ErrNotExist):
	default:
		m.log.Warn("saved retrieval index not used; building it again", "collection", ci.spec.Name, "err", err)
	}
	return false
}

// buildInBackground builds a collection's graph while it answers exactly,
// reporting progress (in /v1/status) as the vectors go in.
func (m *Manager) buildInBackground(ctx context.Context, ci *collectionIndex) {
	bp := &buildProgress{total: ci.index.Len(), started: time.Now().UTC()}
	m.building.Store(ci.spec.Name, bp)
	m.builds.Add(1)
	go func() {
		defer m.builds.Done()
		defer m.building.Delete(ci.spec.Name)
		start := time.Now()
		if err := ci.index.BuildGraph(ctx, &bp.done); err != nil {
			return // shutting down: the next start builds it
		}
		m.count(func(s *Stats) { s.GraphsBuilt++ })
		m.log.Info("retrieval index built", "collection", ci.spec.Name, "documents", ci.index.Len(), "seconds", time.Since(start).Seconds())
	}()
}

// saveAll saves every collection's graph (Run's last act), after the
// background builds end.
func (m *Manager) saveAll() {
	m.builds.Wait()
	if m.indexDir == "" {
		return
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	for name, ci := range m.indexes {
		if m.space != nil {
			if err := m.space(ci.index.GraphBytes()); err != nil {
				m.log.Warn("retrieval index not saved", "collection", name, "err", err)
				continue
			}
		}
		if err := ci.index.Save(m.indexDir, name); err != nil {
			m.log.Warn("retrieval index not saved", "collection", name, "err", err)
		}
	}
}

func (m *Manager) count(f func(*Stats)) {
	m.statsMu.Lock()
	f(&m.stats)
	m.statsMu.Unlock()
}

func (m *Manager) addDoc(ci *collectionIndex, d collections.Doc) {
	v, err := collections.DecodeVector(d.Vector)
	if err == nil {
		err = collections.CheckVector(v, ci.spec.Dimension)
	}
	if err == nil {
		err = ci.index.Upsert(d.ID, v)
	}
	if err != nil {
		m.statsMu.Lock()
		m.stats.BadDocuments++
		m.statsMu.Unlock()
		m.log.Warn("document left out of the index", "collection", ci.spec.Name, "id", d.ID, "err", err)
		return
	}
	ci.mu.Lock()
	if len(d.Metadata) > 0 {
		ci.meta[d.ID] = d.Metadata
	} else {
		delete(ci.meta, d.ID)
	}
	if ci.applied.Compare(d.HLC) < 0 {
		ci.applied = d.HLC
	}
	ci.mu.Unlock()
}

func (m *Manager) apply(ctx context.Context, ev crdt.Event) {
	start := time.Now()
	c, id, err := collections.ParseKey(ev.Key)
	if err != nil {
		return
	}
	if id == "" { // a collection spec
		if ev.Type == crdt.EventPut && ev.Record.Kind == collections.KindSpec {
			var spec collections.Spec
			if ev.Record.DecodeBody(&spec) == nil {
				m.mu.RLock()
				_, known := m.indexes[c]
				m.mu.RUnlock()
				if !known {
					m.rebuild(ctx, spec) // documents may have arrived first
				}
			}
		}
		return
	}
	m.mu.RLock()
	ci := m.indexes[c]
	m.mu.RUnlock()
	if ci == nil {
		// Documents before their collection's spec: the spec's arrival
		// rebuilds from the stored documents.
		return
	}
	switch ev.Type {
	case crdt.EventPut:
		var d collections.Doc
		if ev.Record.Kind != collections.KindDoc || ev.Record.DecodeBody(&d) != nil || d.ID != id {
			return
		}
		m.addDoc(ci, d)
	case crdt.EventDelete:
		ci.index.Delete(id)
		ci.mu.Lock()
		delete(ci.meta, id)
		ci.mu.Unlock()
	}
	ci.mu.Lock()
	ci.updated = time.Now()
	ci.mu.Unlock()
	m.statsMu.Lock()
	m.stats.Applied++
	m.stats.UpdateTime += time.Since(start)
	m.statsMu.Unlock()
}

// Result is one query hit with its document; Freshness describes how
// current a collection's index is. Both are wire types (package api).
type (
	Result    = api.Result
	Freshness = api.Freshness
)

// Query returns the k best documents for vector q in collection c whose
// metadata has every key/value of filter.
func (m *Manager) Query(ctx context.Context, c string, q []float32, k int, filter map[string]string) ([]Result, Freshness, error) {
	start := time.Now()
	m.mu.RLock()
	ci := m.indexes[c]
	m.mu.RUnlock()
	if ci == nil {
		return nil, Freshness{}, fmt.Errorf("%w: %s", collections.ErrUnknown, c)
	}
	if err := collections.CheckVector(q, ci.spec.Dimension); err != nil {
		return nil, Freshness{}, err
	}
	var accept func(string) bool
	if len(filter) > 0 {
		accept = func(id string) bool {
			ci.mu.RLock()
			md := ci.meta[id]
			ci.mu.RUnlock()
			for k, v := range filter {
				if md[k] != v {
					return false
				}
			}
			return true
		}
	}
	hits, err := ci.index.Search(q, k, accept)
	if err != nil {
		return nil, Freshness{}, err
	}
	out := make([]Result, 0, len(hits))
	for _, h := range hits {
		d, err := m.store.Doc(ctx, c, h.ID)
		if err != nil {
			continue // deleted between the search and the read
		}
		out = append(out, Result{ID: h.ID, Score: h.Score, Text: d.Text, Metadata: d.Metadata})
	}
	m.statsMu.Lock()
	m.stats.QueryCount++
	m.stats.QueryTime += time.Since(start)
	m.statsMu.Unlock()
	return out, m.freshness(ci), nil
}

func (m *Manager) freshness(ci *collectionIndex) Freshness {
	ci.mu.RLock()
	defer ci.mu.RUnlock()
	f := Freshness{Documents: ci.index.Len(), LastApplied: ci.updated.UTC()}
	if !ci.applied.IsZero() {
		f.NewestDocument = ci.applied.Time().UTC()
	}
	return f
}

// CollectionInfo is a collection with its index's state here (a wire
// type).
type CollectionInfo = api.CollectionInfo

// Collections lists the indexed collections.
func (m *Manager) Collections() []CollectionInfo {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]CollectionInfo, 0, len(m.indexes))
	for _, ci := range m.indexes {
		out = append(out, CollectionInfo{Spec: ci.spec, Freshness: m.freshness(ci)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Collection returns one collection's info.
func (m *Manager) Collection(c string) (CollectionInfo, bool) {
	m.mu.RLock()
	ci := m.indexes[c]
	m.mu.RUnlock()
	if ci == nil {
		return CollectionInfo{}, false
	}
	return CollectionInfo{Spec: ci.spec, Freshness: m.freshness(ci)}, true
}

// Stats returns the counters.
func (m *Manager) Stats() Stats {
	m.statsMu.Lock()
	defer m.statsMu.Unlock()
	return m.stats
}
