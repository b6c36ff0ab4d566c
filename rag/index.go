package rag

import (
	"fmt"
	"math"
	"math/rand"
	"sort"
	"sync"

	"github.com/coder/hnsw"
	"github.com/viterin/vek/vek32"
)

// Index is one collection's vectors: an HNSW graph (github.com/coder/hnsw)
// for approximate search, and the vectors themselves, which are the source
// of truth the graph can always be rebuilt from.
//
// coder/hnsw is not safe for concurrent use, re-adding an existing key can
// corrupt it (coder/hnsw#15), and its Delete isolates nodes in ways that
// cost recall. Hence the graph is append-only here: every upsert adds a
// node under a fresh internal key, the replaced or deleted node stays as a
// tombstone that searches skip, and the graph is rebuilt from the vectors
// once tombstones exceed a quarter of the live vectors. One RWMutex:
// searches share it, writes exclude. A panic inside the library rebuilds
// the graph instead of taking the peer down. Small collections are searched
// exactly: below ExactBelow vectors a scan is as fast and has recall 1.
type Index struct {
	dim    int
	metric string

	// ExactBelow: collections smaller than this are searched exactly
	// (SIMD dot products; about 2.5 ms per query at 10,000 384-d vectors on
	// one core). Default 8192.
	ExactBelow int
	// EfSearch is the HNSW result list size at query time (at least k).
	// Default 400.
	EfSearch int

	mu      sync.RWMutex
	vectors map[string][]float32
	keyOf   map[string]uint64 // live id → graph key
	idOf    map[uint64]string // graph key → live id
	next    uint64
	graph   *hnsw.Graph[uint64]
	tombs   int // graph nodes that are no longer live
	seed    int64
}

// Hit is one search result.
type Hit struct {
	ID    string  `json:"id"`
	Score float32 `json:"score"` // higher is closer: cosine similarity, dot product, or -L2 distance
}

// NewIndex returns an empty index for vectors of dim components.
func NewIndex(dim int, metric string) *Index {
	x := &Index{dim: dim, metric: metric, ExactBelow: 8192, EfSearch: 400, vectors: map[string][]float32{},
		keyOf: map[string]uint64{}, idOf: map[uint64]string{}, seed: 1}
	x.graph = x.newGraph()
	return x
}

func (x *Index) newGraph() *hnsw.Graph[uint64] {
	g := hnsw.NewGraph[uint64]()
	// M 64 and a 400-long result list: coder/hnsw's greedy search stops at
	// the first expansion that does not improve its best candidate, so
	// recall depends on connectivity. On 10,000 clustered 384-d vectors,
	// recall@10 was 0.78 with M 32 and 0.97 with M 64 (build 3.6× slower);
	// see docs/benchmarks.md.
	g.M = 64
	g.Ml = 0.5
	g.EfSearch = x.EfSearch
	g.Rng = rand.New(rand.NewSource(x.seed))
	switch x.metric {
	case "l2":
		g.Distance = hnsw.EuclideanDistance
	default:
		// Cosine vectors are normalised on insert, so both cosine and dot
		// rank by the negated dot product.
		g.Distance = negDot
	}
	return g
}

// negDot is the graph's distance for normalised (cosine) and dot-product
// collections; vek32 uses the CPU's SIMD instructions where it has them.
func negDot(a, b []float32) float32 { return -vek32.Dot(a, b) }

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
		return -hnsw.EuclideanDistance(a, b)
	}
	return vek32.Dot(a, b)
}

// Len is the number of vectors.
func (x *Index) Len() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return len(x.vectors)
}

// Upsert adds or replaces id's vector.
func (x *Index) Upsert(id string, v []float32) error {
	if len(v) != x.dim {
		return fmt.Errorf("vector of %d components in an index of dimension %d", len(v), x.dim)
	}
	p := x.prepare(v)
	x.mu.Lock()
	defer x.mu.Unlock()
	if old, ok := x.keyOf[id]; ok {
		delete(x.idOf, old)
		x.tombs++
	}
	x.next++
	key := x.next
	x.vectors[id] = p
	x.keyOf[id], x.idOf[key] = key, id
	x.graphOp(func() { x.graph.Add(hnsw.MakeNode(key, p)) })
	x.maybeRebuild()
	return nil
}

// Delete removes id; it reports whether it was there.
func (x *Index) Delete(id string) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	key, ok := x.keyOf[id]
	if !ok {
		return false
	}
	delete(x.vectors, id)
	delete(x.keyOf, id)
	delete(x.idOf, key)
	x.tombs++
	x.maybeRebuild()
	return true
}

// graphOp runs f on the graph; a panic in the library rebuilds the graph
// from the vectors. Call with x.mu held for writing.
func (x *Index) graphOp(f func()) {
	defer func() {
		if r := recover(); r != nil {
			x.rebuildLocked()
		}
	}()
	f()
}

func (x *Index) maybeRebuild() {
	if x.tombs > 64 && x.tombs*4 > len(x.vectors) {
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
	ids := make([]string, 0, len(x.vectors))
	for id := range x.vectors {
		ids = append(ids, id)
	}
	sort.Strings(ids) // deterministic graphs for equal contents
	x.graph = x.newGraph()
	x.keyOf, x.idOf, x.next, x.tombs = make(map[string]uint64, len(ids)), make(map[uint64]string, len(ids)), 0, 0
	for _, id := range ids {
		x.next++
		x.keyOf[id], x.idOf[x.next] = x.next, id
		x.graph.Add(hnsw.MakeNode(x.next, x.vectors[id]))
	}
}

// Search returns the k best hits for q among the ids filter accepts (nil
// accepts all). With a filter or a small collection it scans exactly;
// otherwise it asks the graph for k (widened when a filter rejects many).
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
	if len(x.vectors) < x.ExactBelow || filter != nil {
		return x.exactLocked(p, k, filter), nil
	}
	hits, ok := x.approxLocked(p, k)
	if !ok || len(hits) < min(k, len(x.vectors)) {
		return x.exactLocked(p, k, nil), nil
	}
	return hits, nil
}

func (x *Index) approxLocked(p []float32, k int) (hits []Hit, ok bool) {
	defer func() {
		if r := recover(); r != nil {
			hits, ok = nil, false // searched exactly instead
		}
	}()
	// coder/hnsw keeps a result list of the size asked for and stops when
	// it no longer improves, so asking for only k costs recall: ask for
	// EfSearch (and enough to cover the tombstones the list may hold),
	// then keep the best k.
	want := max(x.EfSearch, k+min(x.tombs, k+16))
	if want > 4096 {
		return nil, false
	}
	nodes := x.graph.Search(p, want)
	hits = make([]Hit, 0, k)
	for _, n := range nodes {
		id, live := x.idOf[n.Key]
		if !live {
			continue
		}
		hits = append(hits, Hit{ID: id, Score: x.score(p, n.Value)})
	}
	sort.Slice(hits, func(i, j int) bool { return less(hits[j], hits[i]) })
	if len(hits) > k {
		hits = hits[:k]
	}
	return hits, true
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
