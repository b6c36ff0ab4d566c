package rag

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/crdt"
	"github.com/shoal-mesh/shoal/crdt/collections"
)

// Manager keeps one Index per collection in step with the replicated
// documents: on start it reopens each saved index whose documents are
// still the stored ones, or builds it from the stored records (CRDT hooks
// are not replayed; see startup.go), then applies document events as they
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

// collectionIndex is one collection's index and what else queries and
// saves read of its documents. Lock order: mu is never held while
// calling into index, except by a filter's Allow, which index calls with
// its own lock held for reading (so index's lock comes first).
type collectionIndex struct {
	spec    collections.Spec
	index   *Index
	mu      sync.RWMutex
	docs    *docState
	updated time.Time // when the last event was applied
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
	specs, sums, err := m.scan(ctx)
	if err != nil {
		m.log.Error("listing collections", "err", err)
	}
	for _, spec := range specs {
		m.loading(spec.Name) // each answers ErrLoading until its turn is done
	}
	total := 0
	for _, spec := range specs {
		total += m.load(ctx, spec, sums[spec.Name])
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
	var batch []crdt.Event
	for {
		select {
		case <-ctx.Done():
			return
		case <-sub.Done():
			return
		case ev := <-sub.C():
			batch := m.drain(sub, append(batch[:0], ev))
			m.applyBatch(ctx, batch)
			m.applied.Store(batch[len(batch)-1].Seq)
		}
	}
}

func (m *Manager) count(f func(*Stats)) {
	m.statsMu.Lock()
	f(&m.stats)
	m.statsMu.Unlock()
}

// maxBatch bounds the events applied together: a run of document puts
// goes into the graph on every core at once.
const maxBatch = 256

// drain appends the events already waiting on sub, up to maxBatch.
func (m *Manager) drain(sub *crdt.Subscription, batch []crdt.Event) []crdt.Event {
	for len(batch) < maxBatch {
		select {
		case ev := <-sub.C():
			batch = append(batch, ev)
		default:
			return batch
		}
	}
	return batch
}

// applyBatch applies events in order, each run of document puts into one
// collection together.
func (m *Manager) applyBatch(ctx context.Context, evs []crdt.Event) {
	var run docRun
	for _, ev := range evs {
		c, id, err := collections.ParseKey(ev.Key)
		if err == nil && id != "" && ev.Type == crdt.EventPut {
			if ci := m.index(c); ci != nil {
				if ci != run.ci {
					m.applyDocs(&run)
					run.ci = ci
				}
				run.ids, run.evs = append(run.ids, id), append(run.evs, ev)
				continue
			}
		}
		m.applyDocs(&run)
		m.apply(ctx, ev)
	}
	m.applyDocs(&run)
}

// docRun is a run of document puts into one collection.
type docRun struct {
	ci  *collectionIndex
	ids []string
	evs []crdt.Event
}

// applyDocs indexes a run of document puts and empties it.
func (m *Manager) applyDocs(run *docRun) {
	if len(run.ids) == 0 {
		return
	}
	start := time.Now()
	ci := run.ci
	var ids []string
	var docs []collections.Doc
	var vecs [][]float32
	for i, id := range run.ids {
		ci.mu.Lock()
		ci.docs.sums[id] = sumOf(run.evs[i].Value)
		ci.mu.Unlock()
		d, v, err := m.decode(ci, id, run.evs[i].Record)
		if err != nil {
			m.leaveOut(ci, id, err)
			continue
		}
		ids, docs, vecs = append(ids, id), append(docs, d), append(vecs, v)
	}
	if err := ci.index.UpsertMany(ids, vecs); err != nil {
		for _, id := range ids {
			m.leaveOut(ci, id, err)
		}
	} else {
		m.noteDocs(ci, ids, docs)
	}
	n := len(run.ids)
	run.ids, run.evs = run.ids[:0], run.evs[:0]
	m.count(func(s *Stats) {
		s.Applied += uint64(n)
		s.UpdateTime += time.Since(start)
	})
}

// decode reads a document put's body and vector.
func (m *Manager) decode(ci *collectionIndex, id string, rec crdt.Record) (collections.Doc, []float32, error) {
	d, err := collections.DocOf(rec)
	if err != nil {
		return d, nil, err
	}
	v, err := m.vectorOf(ci, id, d)
	return d, v, err
}

// vectorOf decodes and checks a document's vector.
func (m *Manager) vectorOf(ci *collectionIndex, id string, d collections.Doc) ([]float32, error) {
	v, err := collections.DecodeVector(d.Vector)
	if err == nil {
		err = collections.CheckVector(v, ci.spec.Dimension)
	}
	if err == nil && d.ID != id {
		err = fmt.Errorf("document %q stored under id %q", d.ID, id)
	}
	return v, err
}

// noteDocs records indexed documents' metadata and HLCs.
func (m *Manager) noteDocs(ci *collectionIndex, ids []string, docs []collections.Doc) {
	ci.mu.Lock()
	defer ci.mu.Unlock()
	for i, id := range ids {
		ci.docs.meta.set(id, docs[i].Metadata)
		if ci.docs.applied.Compare(docs[i].HLC) < 0 {
			ci.docs.applied = docs[i].HLC
		}
	}
	ci.updated = time.Now()
}

// addDoc indexes one decoded document (a start-up read).
func (m *Manager) addDoc(ci *collectionIndex, id string, d collections.Doc) {
	v, err := m.vectorOf(ci, id, d)
	if err == nil {
		err = ci.index.Upsert(id, v)
	}
	if err != nil {
		m.leaveOut(ci, id, err)
		return
	}
	m.noteDocs(ci, []string{id}, []collections.Doc{d})
}

func (m *Manager) index(c string) *collectionIndex {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.indexes[c]
}

// leaveOut keeps a document record that cannot be indexed out of the
// index (an earlier version of it included), counting it.
func (m *Manager) leaveOut(ci *collectionIndex, id string, err error) {
	ci.index.Delete(id)
	ci.mu.Lock()
	ci.docs.meta.remove(id)
	ci.mu.Unlock()
	m.count(func(s *Stats) { s.BadDocuments++ })
	m.log.Warn("document left out of the index", "collection", ci.spec.Name, "id", id, "err", err)
}

// apply applies one event that is not a document put into a known
// collection (those go through applyDocs): a collection spec, or a
// document delete.
func (m *Manager) apply(ctx context.Context, ev crdt.Event) {
	start := time.Now()
	c, id, err := collections.ParseKey(ev.Key)
	if err != nil {
		return
	}
	if id == "" {
		m.applySpec(ctx, c, ev)
		return
	}
	ci := m.index(c)
	if ci == nil || ev.Type != crdt.EventDelete {
		// Documents before their collection's spec: the spec's arrival
		// loads the stored documents.
		return
	}
	ci.index.Delete(id)
	ci.mu.Lock()
	delete(ci.docs.sums, id)
	ci.docs.meta.remove(id)
	ci.updated = time.Now()
	ci.mu.Unlock()
	m.count(func(s *Stats) {
		s.Applied++
		s.UpdateTime += time.Since(start)
	})
}

// applySpec handles a collection spec's event: a new collection is loaded
// from the store (its documents may have arrived first).
func (m *Manager) applySpec(ctx context.Context, c string, ev crdt.Event) {
	if ev.Type != crdt.EventPut || ev.Record.Kind != collections.KindSpec {
		return
	}
	var spec collections.Spec
	if ev.Record.DecodeBody(&spec) != nil {
		return
	}
	if m.index(c) == nil {
		m.load(ctx, spec, nil)
	}
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
	ci := m.index(c)
	if ci == nil {
		if _, loading := m.building.Load(c); loading {
			return nil, Freshness{}, fmt.Errorf("%w: %s", ErrLoading, c)
		}
		return nil, Freshness{}, fmt.Errorf("%w: %s", collections.ErrUnknown, c)
	}
	if err := collections.CheckVector(q, ci.spec.Dimension); err != nil {
		return nil, Freshness{}, err
	}
	var f *Filter
	if len(filter) > 0 {
		ci.mu.RLock()
		ids := ci.docs.meta.match(filter)
		ci.mu.RUnlock()
		f = &Filter{IDs: ids, Allow: func(id string) bool {
			ci.mu.RLock()
			defer ci.mu.RUnlock()
			return ci.docs.meta.matches(id, filter)
		}}
	}
	hits, err := ci.index.Search(q, k, f)
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
	m.count(func(s *Stats) {
		s.QueryCount++
		s.QueryTime += time.Since(start)
	})
	return out, m.freshness(ci), nil
}

func (m *Manager) freshness(ci *collectionIndex) Freshness {
	n := ci.index.Len() // before ci.mu: see collectionIndex on lock order
	ci.mu.RLock()
	defer ci.mu.RUnlock()
	f := Freshness{Documents: n, LastApplied: ci.updated.UTC()}
	if !ci.docs.applied.IsZero() {
		f.NewestDocument = ci.docs.applied.Time().UTC()
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
	ci := m.index(c)
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
