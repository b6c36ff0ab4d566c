package rag

import (
	"context"
	"errors"
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
// arrive. If it falls so far behind that the replica ends its
// subscription (crdt.ErrSlowSubscriber), it subscribes again and compares
// the store with its indexes (resync). Queries read the indexes; nothing
// here embeds documents — their vectors come with them.
type Manager struct {
	store *collections.Store
	log   *slog.Logger

	mu      sync.RWMutex
	indexes map[string]*collectionIndex
	ready   chan struct{}

	statsMu sync.Mutex
	stats   Stats

	replica *crdt.Replica
	// sub is the subscription Run follows; Run replaces it after a
	// resync, so readers load it (before resyncing: Run sets resyncing
	// before it installs the subscription that comes with a resync).
	sub       atomic.Pointer[crdt.Subscription]
	resyncing atomic.Bool
	applied   atomic.Uint64 // Seq of the last event handled

	building sync.Map // collection → *buildProgress, while its index is built

	// indexDir, when set, is where graphs are saved at shutdown and
	// reopened at start (see persist.go); space is asked first whether a
	// save fits on the disk.
	indexDir string
	space    func(need int64) error
	// startSaves holds the saves read at start for knownAdmitted, so that
	// reopen does not read and decode them again (takeSave).
	savesMu    sync.Mutex
	startSaves map[string]savedRead
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
	// Resyncs counts the times the manager fell behind, lost its
	// subscription and compared its indexes with the store again.
	Resyncs uint64
}

// NewManager returns a manager; call Run.
func NewManager(r *crdt.Replica, log *slog.Logger) *Manager {
	return &Manager{store: collections.NewStore(r), replica: r, log: log, indexes: map[string]*collectionIndex{}, ready: make(chan struct{})}
}

// Pending estimates the replicated changes not yet reflected in the
// indexes: changes not yet sent to the manager, plus one if it has not
// handled the last one it was sent or is reading the store again.
func (m *Manager) Pending() uint64 {
	sub := m.sub.Load()
	if sub == nil {
		return 0
	}
	seq, done := m.replica.EventSeq(), sub.Dispatched()
	p := seq - min(done, seq)
	if m.resyncing.Load() || sub.Delivered() > m.applied.Load() {
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

// subscriptionBuffer is the channel of the manager's subscription; the
// replica keeps more behind it (crdt.SubscriberLimits).
const subscriptionBuffer = 1024

// Subscribe creates the manager's event subscription; call it before
// writing anything, then Run.
func (m *Manager) Subscribe() *crdt.Subscription {
	sub := m.replica.Subscribe(collections.Prefix+"/", subscriptionBuffer)
	m.sub.Store(sub)
	return sub
}

// CaughtUp waits until every state change the replica had queued when it
// was called is reflected in the indexes: after a write, or after a
// Shoal-After token's heads arrived, queries see those documents.
func (m *Manager) CaughtUp(ctx context.Context) error {
	target := m.replica.EventSeq()
	for {
		select {
		case <-m.ready:
			if m.caughtUp(target) {
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

// caughtUp: every change up to target that concerns the manager was sent
// to it (its subscription's Dispatched) and handled (Delivered is at most
// applied), and no resync is under way. An ended subscription's
// Dispatched stops, so a change it lost is waited for until the resync
// that follows has read it from the store.
func (m *Manager) caughtUp(target uint64) bool {
	sub := m.sub.Load() // before resyncing: see Manager.sub
	return sub != nil && !m.resyncing.Load() && sub.Dispatched() >= target && sub.Delivered() <= m.applied.Load()
}

// Ready is closed once the start-up rebuild is done.
func (m *Manager) Ready() <-chan struct{} { return m.ready }

// Run rebuilds the indexes, then follows sub (events under
// collections.Prefix) until ctx ends or sub is closed. If the replica ends
// sub because the manager fell behind, Run subscribes again and resyncs.
func (m *Manager) Run(ctx context.Context, sub *crdt.Subscription) {
	m.sub.Store(sub)
	defer func() { sub.Close() }() // the last subscription
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
	m.savesMu.Lock()
	m.startSaves = nil // saves of collections no longer stored are not kept
	m.savesMu.Unlock()
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
			if ctx.Err() != nil || !errors.Is(sub.Err(), crdt.ErrSlowSubscriber) {
				return
			}
			sub = m.resubscribe(ctx, sub.Err())
		case ev := <-sub.C():
			batch := m.drain(sub, append(batch[:0], ev))
			m.applyBatch(ctx, batch)
			m.applied.Store(batch[len(batch)-1].Seq)
		}
	}
}

// resubscribe follows a subscription the replica ended because the
// manager fell behind, losing events: it subscribes again first and then
// resyncs, so every change is either read from the store or arrives on
// the new subscription. (The replica dispatches an event only once its
// write has landed, so whatever the old subscription lost is in the
// store by the time the new one exists.)
func (m *Manager) resubscribe(ctx context.Context, why error) *crdt.Subscription {
	m.resyncing.Store(true)
	defer m.resyncing.Store(false)
	m.log.Warn("the retrieval indexes fell behind the replicated state: reading it again", "err", why)
	sub := m.replica.Subscribe(collections.Prefix+"/", subscriptionBuffer)
	m.sub.Store(sub)
	m.resync(ctx)
	return sub
}

// resync brings the indexes in step with the store after events were
// lost, reading it as Run's start does: a collection not indexed yet is
// loaded (load); for the others the stored document records are hashed
// undecoded, as at start, and only those whose hash differs from the one
// applied are decoded and indexed again, while documents no longer
// stored are removed. A collection's index keeps answering meanwhile.
func (m *Manager) resync(ctx context.Context) {
	start := time.Now()
	var specs []collections.Spec
	if err := m.store.Scan(ctx, func(s collections.Spec) { specs = append(specs, s) }, nil); err != nil {
		if ctx.Err() == nil {
			m.log.Error("listing collections to resync the retrieval indexes", "err", err)
		}
		return
	}
	changed := 0
	for _, spec := range specs {
		if ci := m.index(spec.Name); ci != nil {
			changed += m.catchUp(ctx, ci)
		} else {
			changed += m.load(ctx, spec, nil)
		}
	}
	m.count(func(s *Stats) { s.Resyncs++ })
	m.log.Info("retrieval indexes resynced", "collections", len(specs), "documents_changed", changed, "seconds", time.Since(start).Seconds())
}

// catchUp compares one collection's stored documents with its index and
// applies the difference, returning how many documents it changed.
func (m *Manager) catchUp(ctx context.Context, ci *collectionIndex) int {
	stored := map[string]struct{}{}
	changed := 0
	err := m.store.ScanDocs(ctx, ci.spec.Name, func(id string, value []byte) error {
		stored[id] = struct{}{}
		sum := sumOf(value)
		ci.mu.Lock()
		old, had := ci.docs.sums[id]
		ci.docs.sums[id] = sum
		ci.mu.Unlock()
		if had && old == sum {
			return nil
		}
		changed++
		if d, _, err := collections.DecodeDoc(value); err != nil {
			m.leaveOut(ci, id, err)
		} else {
			m.addDoc(ci, id, d)
		}
		return nil
	})
	if err != nil {
		// A partial scan says nothing about what is gone.
		if ctx.Err() == nil {
			m.log.Error("reading documents to resync", "collection", ci.spec.Name, "err", err)
		}
		return changed
	}
	var gone []string
	ci.mu.RLock()
	for id := range ci.docs.sums {
		if _, ok := stored[id]; !ok {
			gone = append(gone, id)
		}
	}
	ci.mu.RUnlock()
	for _, id := range gone {
		m.removeDoc(ci, id)
	}
	return changed + len(gone)
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
	m.removeDoc(ci, id)
	m.count(func(s *Stats) {
		s.Applied++
		s.UpdateTime += time.Since(start)
	})
}

// removeDoc takes a deleted document out of its collection's index.
func (m *Manager) removeDoc(ci *collectionIndex, id string) {
	ci.index.Delete(id)
	ci.mu.Lock()
	delete(ci.docs.sums, id)
	ci.docs.meta.remove(id)
	ci.updated = time.Now()
	ci.mu.Unlock()
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
