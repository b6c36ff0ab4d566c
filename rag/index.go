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
// (hnswlib.go) for approximate search, and the vectors themselves, which
// are the source of truth the graph can always be rebuilt from.
//
// Every upsert adds a node under a fresh label; the node it replaces, or a
// deleted one, is marked deleted in the graph (hnswlib's searches skip
// such nodes) and counted as a tombstone, and the graph is rebuilt from
// the vectors once tombstones exceed a quarter of the live vectors, since
// deleted nodes still take memory and search steps. Re-using a label is
// never needed, so no update can leave the graph inconsistent. One
// RWMutex: searches share it, writes exclude (see graph for what hnswlib
// allows). Small collections are searched exactly: below ExactBelow
// vectors a scan is as fast and has recall 1.
type Index struct {
	dim    int
	metric string

	// ExactBelow: collections smaller than this are searched exactly
	// (SIMD dot products; about 2.5 ms per query at 10,000 384-d vectors on
	// one core). Default 8192.
	ExactBelow int
	// EfSearch is the HNSW result list size at query time (hnswlib
	// widens it to k when k is larger), read when the graph is built.
	// Default 100: see docs/benchmarks.md for the recall it gives.
	EfSearch int

	mu      sync.RWMutex
	vectors map[string][]float32
	keyOf   map[string]uint64 // live id → graph label
	idOf    map[uint64]string // graph label → live id
	next    uint64
	graph   *graph
	tombs   int // graph nodes that are no longer live
	seed    int64
	// bulk defers the graph: while a new index is filled, and while
	// BuildGraph builds it in the background, searches are exact and
	// writes touch only the vectors.
	bulk bool
	// gen counts writes, so a graph built from a snapshot is installed only
	// if nothing changed meanwhile.
	gen uint64
}

// Hit is one search result.
type Hit struct {
	ID    string  `json:"id"`
	Score float32 `json:"score"` // higher is closer: cosine similarity, dot product, or -L2 distance
}

// NewIndex returns an empty index for vectors of dim components.
func NewIndex(dim int, metric string) *Index {
	x := &Index{dim: dim, metric: metric, ExactBelow: 8192, EfSearch: 100, vectors: map[string][]float32{},
		keyOf: map[string]uint64{}, idOf: map[uint64]string{}, seed: 1}
	x.graph, _ = x.newGraph(0) // nil if hnswlib cannot allocate it: searches are then exact
	return x
}

// newGraph returns an empty graph with room for n vectors, set to search
// with EfSearch.
func (x *Index) newGraph(n int) (*graph, error) {
	g, err := newGraph(x.dim, x.metric, max(n, 1024), x.seed)
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

// Len is the number of vectors.
func (x *Index) Len() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return len(x.vectors)
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

// Upsert adds or replaces id's vector.
func (x *Index) Upsert(id string, v []float32) error {
	if len(v) != x.dim {
		return fmt.Errorf("vector of %d components in an index of dimension %d", len(v), x.dim)
	}
	p := x.prepare(v)
	x.mu.Lock()
	defer x.mu.Unlock()
	x.gen++
	x.forgetLocked(id)
	x.next++
	key := x.next
	x.vectors[id] = p
	x.keyOf[id], x.idOf[key] = key, id
	if x.bulk {
		return nil
	}
	if x.graph != nil && x.graph.add(p, key) != nil {
		x.graph = nil // rebuilt below
	}
	x.maybeRebuild()
	return nil
}

// UpsertAll adds or replaces many vectors at once and builds the graph
// again on every core: an import, or a start-up load, is faster this way
// than vector by vector.
func (x *Index) UpsertAll(ids []string, vs [][]float32) error {
	if len(ids) != len(vs) {
		return fmt.Errorf("%d ids for %d vectors", len(ids), len(vs))
	}
	for _, v := range vs {
		if len(v) != x.dim {
			return fmt.Errorf("vector of %d components in an index of dimension %d", len(v), x.dim)
		}
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.gen++
	for i, id := range ids {
		x.vectors[id] = x.prepare(vs[i])
	}
	x.bulk = false
	x.rebuildLocked()
	return nil
}

func (x *Index) Delete(id string) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	if _, ok := x.vectors[id]; !ok {
		return false
	}
	x.gen++
	x.forgetLocked(id)
	delete(x.vectors, id)
	if !x.bulk {
		x.maybeRebuild()
	}
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
	if !x.bulk && x.graph != nil && x.graph.markDeleted(key) != nil {
		x.graph = nil
	}
}

func (x *Index) maybeRebuild() {
	if x.bulk {
		return // the bulk load's graph comes later
	}
	if x.graph == nil || x.tombs > 64 && x.tombs*4 > len(x.vectors) {
		x.rebuildLocked()
	}
}

// Rebuild builds the graph again from the vectors.
func (x *Index) Rebuild() {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.rebuildLocked()
}

func (x *Index) rebuildLocked() {
	b, err := x.build(context.Background(), x.vectors, nil)
	if err != nil {
		b.g = nil // searches are exact until the next write rebuilds it
	}
	x.install(b)
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
	if err := g.addAll(ctx, ids, vectors, b.keyOf, done); err != nil {
		g.free()
		return b, err
	}
	b.g = g
	return b, nil
}

// install makes b the index's graph. Call with x.mu held for writing.
func (x *Index) install(b built) {
	if x.graph != nil && x.graph != b.g {
		x.graph.free()
	}
	x.graph, x.keyOf, x.idOf, x.next, x.tombs, x.bulk = b.g, b.keyOf, b.idOf, b.next, 0, false
}

// BuildGraph builds the graph of an index filled in bulk without holding
// it: searches meanwhile are exact, and writes go on (touching only the
// vectors). A graph built from a snapshot that writes overtook is built
// again; after three tries the last build holds the lock. done counts
// the vectors added, for progress. If ctx ends first it returns its error
// and the index stays without a graph (exact).
func (x *Index) BuildGraph(ctx context.Context, done *atomic.Int64) error {
	for range 3 {
		x.mu.RLock()
		snap, gen := maps.Clone(x.vectors), x.gen
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

// Search returns the k best hits for q among the ids filter accepts (nil
// accepts all). With a filter or a small collection it scans exactly;
// otherwise it asks the graph.
func (x *Index) Search(q []float32, k int, filter func(id string) bool) ([]Hit, error) {
	if len(q) != x.dim {
		return nil, fmt.Errorf("query vector of %d components in an index of dimension %d", len(q), x.dim)
	}
	if k <= 0 {
		return nil, nil
	}
	p := x.prepare(q)
	x.mu.RLock()
	defer x.mu.RUnlock()
	if len(x.vectors) < x.ExactBelow || filter != nil || x.graph == nil || x.bulk {
		return x.exactLocked(p, k, filter), nil
	}
	hits, err := x.approxLocked(p, k)
	if err != nil || len(hits) < min(k, len(x.vectors)) {
		return x.exactLocked(p, k, nil), nil
	}
	return hits, nil
}

func (x *Index) approxLocked(p []float32, k int) ([]Hit, error) {
	labels, err := x.graph.search(p, k)
	if err != nil {
		return nil, err
	}
	hits := make([]Hit, 0, len(labels))
	for _, l := range labels {
		if id, live := x.idOf[l]; live {
			hits = append(hits, Hit{ID: id, Score: x.score(p, x.vectors[id])})
		}
	}
	sort.Slice(hits, func(i, j int) bool { return less(hits[j], hits[i]) })
	return hits, nil
}

// Exact is a brute-force search (the reference recall is measured against).
func (x *Index) Exact(q []float32, k int) []Hit {
	p := x.prepare(q)
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.exactLocked(p, k, nil)
}
func (x *Index) exactLocked(p []float32, k int, filter func(string) bool) []Hit {
	hits := make([]Hit, 0, k+1)
	worst := func() int {
		w := 0
		for i := range hits {
			if less(hits[i], hits[w]) {
				w = i
			}
		}
		return w
	}
	w := -1
	for id, v := range x.vectors {
		if filter != nil && !filter(id) {
			continue
		}
		h := Hit{ID: id, Score: x.score(p, v)}
		if len(hits) < k {
			hits = append(hits, h)
			w = -1
			continue
		}
		if w < 0 {
			w = worst()
		}
		if less(hits[w], h) {
			hits[w] = h
			w = -1
		}
	}
	sort.Slice(hits, func(i, j int) bool { return less(hits[j], hits[i]) })
	return hits
}

// less orders hits worst first: lower score, then larger id.
func less(a, b Hit) bool {
	if a.Score != b.Score {
		return a.Score < b.Score
	}
	return a.ID > b.ID
}
