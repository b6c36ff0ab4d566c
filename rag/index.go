package rag

import (
	"context"
	"fmt"
	"maps"
	"math"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/viterin/vek/vek32"
)

// Index is one collection's vectors: an HNSW graph held by hnswlib
// (hnswlib.go), which is also the only copy of the vectors once it is
// built — exact searches and rebuilds read them back from it, so a vector
// costs hnswlib's memory and a few map entries, not a second copy in the
// Go heap.
//
// Every upsert adds a node under a fresh label; the node it replaces, or a
// deleted one, is marked deleted in the graph (hnswlib's searches skip
// such nodes) and counted as a tombstone, and the graph is rebuilt once
// tombstones exceed a quarter of the live vectors, since deleted nodes
// still take memory and search steps. Re-using a label is never needed,
// so no update can leave the graph inconsistent.
//
// While an index is filled in bulk (a start-up load) and while BuildGraph
// builds its graph in the background, the vectors are held loose in the Go
// heap and searches are exact; the built graph then takes them over.
//
// One RWMutex: searches share it, writes exclude (see graph for what
// hnswlib allows). Small collections are searched exactly: below
// ExactBelow vectors a scan is as fast and has recall 1.
type Index struct {
	dim    int
	metric string
	int8   bool // the graph holds int8 vectors (NewIndexInt8)

	// ExactBelow: collections smaller than this are searched exactly
	// (about 2.5 ms per query at 10,000 384-d vectors on one core), and so
	// are filters that leave fewer candidates. Default 8192.
	ExactBelow int
	// EfSearch is the HNSW result list size at query time (hnswlib
	// widens it to k when k is larger), read when the graph is built.
	// Default 100: see docs/benchmarks.md for the recall it gives.
	EfSearch int

	mu    sync.RWMutex
	keyOf map[string]uint64 // live id → graph label (when loose is nil)
	idOf  map[uint64]string // graph label → live id
	next  uint64
	graph *graph
	tombs int   // graph nodes that are no longer live
	seed  int64 // of hnswlib's level generator: 100, its own default
	// loose holds the vectors while no graph holds them all: during a
	// bulk fill and while BuildGraph builds a graph in the background
	// (searches are exact, writes touch only loose). nil otherwise.
	loose map[string][]float32
	// gen counts writes, so a graph built from a snapshot is installed only
	// if nothing changed meanwhile.
	gen uint64
}

// Hit is one search result.
type Hit struct {
	ID    string  `json:"id"`
	Score float32 `json:"score"` // higher is closer: cosine similarity, dot product, or -L2 distance
}

// Filter restricts a search to some documents: IDs lists every one it
// allows, and Allow says whether one id is among them. The index picks
// how to search by the share they make: few candidates are compared
// exactly, many are searched in the graph with the result list widened
// by the inverse share and filtered, falling back to exact when too few
// pass. Either way no id outside the filter is returned.
type Filter struct {
	IDs   []string
	Allow func(id string) bool
}

// NewIndex returns an empty index for vectors of dim components.
func NewIndex(dim int, metric string) *Index { return newIndex(dim, metric, false) }

func newIndex(dim int, metric string, int8 bool) *Index {
	x := &Index{dim: dim, metric: metric, int8: int8, ExactBelow: 8192, EfSearch: 100,
		keyOf: map[string]uint64{}, idOf: map[uint64]string{}, seed: 100}
	var err error
	if x.graph, err = x.newGraph(0); err != nil {
		x.loose = map[string][]float32{} // hnswlib cannot allocate: exact until a rebuild succeeds
	}
	return x
}

// NewIndexInt8 returns an empty cosine index whose graph holds each
// vector as int8 (its unit vector's components over a per-vector scale,
// the largest magnitude over 127, rounded): a little over a quarter of the
// vector memory, each component within half a scale step. Recall against
// float vectors is measured in benchmarks.md.
func NewIndexInt8(dim int) *Index { return newIndex(dim, "cosine", true) }

// newGraph returns an empty graph with room for n vectors, set to search
// with EfSearch.
func (x *Index) newGraph(n int) (*graph, error) {
	g, err := newGraph(x.dim, kindOf(x.metric, x.int8), max(n, 1024), x.seed)
	if err != nil {
		return nil, err
	}
	g.setEf(x.EfSearch)
	return g, nil
}

// prepare copies v, normalised for cosine.
func (x *Index) prepare(v []float32) []float32 {
	out := append([]float32(nil), v...)
	if x.metric == "cosine" {
		var n float64
		for _, f := range out {
			n += float64(f) * float64(f)
		}
		if n > 0 {
			inv := float32(1 / math.Sqrt(n))
			for i := range out {
				out[i] *= inv
			}
		}
	}
	return out
}

// score is the similarity of two prepared vectors (loose search).
func (x *Index) score(a, b []float32) float32 {
	if x.metric == "l2" {
		var s float32
		for i := range a {
			d := a[i] - b[i]
			s += d * d
		}
		return -float32(math.Sqrt(float64(s)))
	}
	return vek32.Dot(a, b)
}

// scoreOf turns hnswlib's distance into the same similarity: its inner
// product space measures 1 - dot, its L2 space the squared distance.
func (x *Index) scoreOf(dist float32) float32 { // int8's too: 1 - dot
	if x.metric == "l2" {
		return -float32(math.Sqrt(float64(max(dist, 0))))
	}
	return 1 - dist
}

// Len is the number of vectors.
func (x *Index) Len() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.lenLocked()
}

func (x *Index) lenLocked() int {
	if x.loose != nil {
		return len(x.loose)
	}
	return len(x.keyOf)
}

// GraphBytes estimates the memory the HNSW graph holds outside the Go
// heap (hnswlib's own allocations).
func (x *Index) GraphBytes() int64 {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if x.graph == nil {
		return 0
	}
	return x.graph.bytes()
}

func (x *Index) checkDim(v []float32) error {
	if len(v) != x.dim {
		return fmt.Errorf("vector of %d components in an index of dimension %d", len(v), x.dim)
	}
	return nil
}

// Upsert adds or replaces id's vector.
func (x *Index) Upsert(id string, v []float32) error {
	if err := x.checkDim(v); err != nil {
		return err
	}
	p := x.prepare(v)
	x.mu.Lock()
	defer x.mu.Unlock()
	x.gen++
	if x.loose != nil {
		x.loose[id] = p
		return nil
	}
	x.forgetLocked(id)
	x.next++
	if err := x.graph.add(p, x.next); err != nil {
		// hnswlib could not take it (out of memory growing the graph): hold
		// every vector loose, exact, and try a graph of them again.
		x.looseLocked()
		x.loose[id] = p
		x.rebuildLocked()
		return nil
	}
	x.keyOf[id], x.idOf[x.next] = x.next, id
	x.maybeRebuild()
	return nil
}

// UpsertMany adds or replaces several vectors (of an id given twice, the
// last), adding them to the graph on every core: how the manager applies
// a run of replicated documents.
func (x *Index) UpsertMany(ids []string, vs [][]float32) error {
	if len(ids) != len(vs) {
		return fmt.Errorf("%d ids for %d vectors", len(ids), len(vs))
	}
	ids, vs = lastOfEach(ids, vs)
	ps := make([][]float32, len(vs))
	for i, v := range vs {
		if err := x.checkDim(v); err != nil {
			return err
		}
		ps[i] = x.prepare(v)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.gen++
	if x.loose == nil {
		labels := make([]uint64, len(ids))
		for i, id := range ids {
			x.forgetLocked(id)
			x.next++
			labels[i] = x.next
		}
		item := func(i int) ([]float32, uint64) { return ps[i], labels[i] }
		if err := x.graph.addAll(context.Background(), len(ids), item, nil); err == nil {
			for i, id := range ids {
				x.keyOf[id], x.idOf[labels[i]] = labels[i], id
			}
			x.maybeRebuild()
			return nil
		}
		x.looseLocked() // as in Upsert: hold them loose and build again
		defer x.rebuildLocked()
	}
	for i, id := range ids {
		x.loose[id] = ps[i]
	}
	return nil
}

// lastOfEach keeps, of an id given more than once, its last vector.
func lastOfEach(ids []string, vs [][]float32) ([]string, [][]float32) {
	last := make(map[string]int, len(ids))
	for i, id := range ids {
		last[id] = i
	}
	if len(last) == len(ids) {
		return ids, vs
	}
	var outIDs []string
	var outVs [][]float32
	for i, id := range ids {
		if last[id] == i {
			outIDs, outVs = append(outIDs, id), append(outVs, vs[i])
		}
	}
	return outIDs, outVs
}

// SetEf sets the result list length of graph searches (EfSearch) on the
// graph built, and for graphs built later.
func (x *Index) SetEf(ef int) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.EfSearch = ef
	if x.graph != nil {
		x.graph.setEf(ef)
	}
}

// Close frees the graph's memory now rather than when the garbage
// collector finds it; the index is left empty.
func (x *Index) Close() {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.graph != nil {
		x.graph.free()
	}
	x.graph, x.keyOf, x.idOf, x.loose = nil, map[string]uint64{}, map[uint64]string{}, map[string][]float32{}
}

// BeginBulk takes the vectors loose, so a fill of many is cheap and a
// graph is built once after it (BuildGraph, Rebuild or UpsertAll).
func (x *Index) BeginBulk() {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.gen++
	x.looseLocked()
}

// UpsertAll adds or replaces many vectors at once and builds the graph
// again on every core: an import, or a start-up load, is faster this way
// than vector by vector.
func (x *Index) UpsertAll(ids []string, vs [][]float32) error {
	if len(ids) != len(vs) {
		return fmt.Errorf("%d ids for %d vectors", len(ids), len(vs))
	}
	for _, v := range vs {
		if err := x.checkDim(v); err != nil {
			return err
		}
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.gen++
	x.looseLocked()
	for i, id := range ids {
		x.loose[id] = x.prepare(vs[i])
	}
	x.rebuildLocked()
	return nil
}

// Delete removes id's vector; false if the index does not hold it.
func (x *Index) Delete(id string) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.loose != nil {
		if _, ok := x.loose[id]; !ok {
			return false
		}
		x.gen++
		delete(x.loose, id)
		return true
	}
	if _, ok := x.keyOf[id]; !ok {
		return false
	}
	x.gen++
	x.forgetLocked(id)
	x.maybeRebuild()
	return true
}

// forgetLocked retires id's graph node, if it has one.
func (x *Index) forgetLocked(id string) {
	key, ok := x.keyOf[id]
	if !ok {
		return
	}
	delete(x.keyOf, id)
	delete(x.idOf, key)
	x.tombs++
	_ = x.graph.markDeleted(key) // cannot fail: the label is live in this graph
}

func (x *Index) maybeRebuild() {
	if x.tombs > 64 && x.tombs*4 > len(x.keyOf) {
		x.rebuildLocked()
	}
}

// looseLocked copies the live vectors out of the graph into loose and
// drops the graph (a no-op when they are loose already).
func (x *Index) looseLocked() {
	if x.loose != nil {
		return
	}
	x.loose = make(map[string][]float32, len(x.keyOf))
	for id, l := range x.keyOf {
		v := make([]float32, x.dim)
		if x.graph.vector(l, v) == nil {
			x.loose[id] = v
		}
	}
	x.graph.free()
	x.graph, x.keyOf, x.idOf, x.next, x.tombs = nil, map[string]uint64{}, map[uint64]string{}, 0, 0
}

// Rebuild builds the graph again from the vectors.
func (x *Index) Rebuild() {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.looseLocked()
	x.rebuildLocked()
}

// rebuildLocked builds a graph of everything: the loose vectors, or the
// graph's own live ones. If hnswlib fails, the vectors stay loose (exact)
// until the next rebuild.
func (x *Index) rebuildLocked() {
	x.looseLocked()
	b, err := x.build(context.Background(), x.loose, nil)
	if err == nil {
		x.install(b)
	}
}

// built is a graph with its label maps, made from one set of vectors.
type built struct {
	g     *graph
	keyOf map[string]uint64
	idOf  map[uint64]string
	next  uint64
}

// build makes a graph of vectors (labels in id order, so equal contents
// make equal graphs), counting the vectors added in done if it is set.
// It reads only its arguments: BuildGraph runs it without the lock.
func (x *Index) build(ctx context.Context, vectors map[string][]float32, done *atomic.Int64) (built, error) {
	ids := make([]string, 0, len(vectors))
	for id := range vectors {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	b := built{keyOf: make(map[string]uint64, len(ids)), idOf: make(map[uint64]string, len(ids))}
	for _, id := range ids {
		b.next++
		b.keyOf[id], b.idOf[b.next] = b.next, id
	}
	g, err := x.newGraph(len(ids))
	if err != nil {
		return b, err
	}
	item := func(i int) ([]float32, uint64) { return vectors[ids[i]], b.keyOf[ids[i]] }
	if err := g.addAll(ctx, len(ids), item, done); err != nil {
		g.free()
		return b, err
	}
	b.g = g
	return b, nil
}

// install makes b the index's graph, which from now on holds the vectors.
// Call with x.mu held for writing.
func (x *Index) install(b built) {
	if x.graph != nil && x.graph != b.g {
		x.graph.free()
	}
	x.graph, x.keyOf, x.idOf, x.next, x.tombs, x.loose = b.g, b.keyOf, b.idOf, b.next, 0, nil
}

// BuildGraph builds the graph of an index filled in bulk without holding
// it: searches meanwhile are exact, and writes go on (touching only the
// loose vectors). A graph built from a snapshot that writes overtook is
// built again; after three tries the last build holds the lock. done
// counts the vectors added, for progress. If ctx ends first it returns
// its error and the index stays without a graph (exact).
func (x *Index) BuildGraph(ctx context.Context, done *atomic.Int64) error {
	for range 3 {
		x.mu.RLock()
		if x.loose == nil {
			x.mu.RUnlock()
			return nil // a graph holds them already
		}
		snap, gen := maps.Clone(x.loose), x.gen
		x.mu.RUnlock()
		done.Store(0)
		b, err := x.build(ctx, snap, done)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		x.mu.Lock()
		if err == nil && x.gen == gen {
			x.install(b)
			x.mu.Unlock()
			return nil
		}
		x.mu.Unlock()
		if b.g != nil {
			b.g.free()
		}
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.rebuildLocked()
	return nil
}
