package rag

import (
	"fmt"
	"math"
	"sort"
)

// filterWiden bounds how far a filtered graph search widens its result
// list before it compares the candidates exactly instead.
const filterWiden = 4096

// Search returns the k best hits for q among the documents f allows (nil:
// all). Small collections and loose vectors are compared exactly; others
// are searched in the graph (see Filter for filtered searches). A graph
// search that finds fewer than k live nodes falls back to an exact one.
func (x *Index) Search(q []float32, k int, f *Filter) ([]Hit, error) {
	if len(q) != x.dim {
		return nil, fmt.Errorf("query vector of %d components in an index of dimension %d", len(q), x.dim)
	}
	if k <= 0 {
		return nil, nil
	}
	p := x.prepare(q)
	x.mu.RLock()
	defer x.mu.RUnlock()
	n := x.lenLocked()
	switch {
	case f != nil && (x.loose != nil || len(f.IDs) < x.ExactBelow):
		return x.exactLocked(p, k, f.IDs)
	case f != nil:
		return x.filteredLocked(p, k, f, n)
	case x.loose != nil || n < x.ExactBelow:
		return x.exactLocked(p, k, nil)
	}
	hits, err := x.approxLocked(p, k, nil)
	if err != nil || len(hits) < min(k, n) {
		return x.exactLocked(p, k, nil)
	}
	return hits, nil
}

// filteredLocked searches the graph for k·n/len(f.IDs) (times 1.5) hits
// and keeps those f allows; while fewer than k survive it asks again for
// four times as many, and past filterWiden it compares the candidates
// exactly.
func (x *Index) filteredLocked(p []float32, k int, f *Filter, n int) ([]Hit, error) {
	share := float64(len(f.IDs)) / float64(max(n, 1))
	want := min(k, len(f.IDs))
	for wide := int(math.Ceil(float64(k) / share * 1.5)); wide <= filterWiden; wide *= 4 {
		hits, err := x.approxLocked(p, min(max(wide, k), n), f.Allow)
		if err != nil {
			break
		}
		if len(hits) >= want {
			return hits[:want], nil
		}
		if wide >= n {
			break
		}
	}
	return x.exactLocked(p, k, f.IDs)
}

// approxLocked asks the graph for k nodes, keeping the live ones allow
// accepts (nil: all), best first.
func (x *Index) approxLocked(p []float32, k int, allow func(string) bool) ([]Hit, error) {
	labels, dists, err := x.graph.search(p, k)
	if err != nil {
		return nil, err
	}
	hits := make([]Hit, 0, len(labels))
	for i, l := range labels {
		if id, live := x.idOf[l]; live && (allow == nil || allow(id)) {
			hits = append(hits, Hit{ID: id, Score: x.scoreOf(dists[i])})
		}
	}
	sortHits(hits)
	return hits, nil
}

// Exact is a brute-force search (the reference recall is measured against).
func (x *Index) Exact(q []float32, k int) []Hit {
	p := x.prepare(q)
	x.mu.RLock()
	defer x.mu.RUnlock()
	hits, _ := x.exactLocked(p, k, nil)
	return hits
}

// exactLocked compares p with every vector among ids (nil: all): in the
// graph's copy, or the loose ones.
func (x *Index) exactLocked(p []float32, k int, ids []string) ([]Hit, error) {
	if k <= 0 {
		return nil, nil
	}
	if x.loose != nil {
		return x.exactLoose(p, k, ids), nil
	}
	var labels []uint64
	if ids != nil {
		labels = make([]uint64, 0, len(ids))
		for _, id := range ids {
			if l, ok := x.keyOf[id]; ok {
				labels = append(labels, l)
			}
		}
		if len(labels) == 0 {
			return nil, nil
		}
	}
	got, dists, err := x.graph.exact(p, labels, k)
	if err != nil {
		return nil, err
	}
	hits := make([]Hit, 0, len(got))
	for i, l := range got {
		if id, live := x.idOf[l]; live {
			hits = append(hits, Hit{ID: id, Score: x.scoreOf(dists[i])})
		}
	}
	sortHits(hits)
	return hits, nil
}

// exactLoose scans the loose vectors (all, or those of ids).
func (x *Index) exactLoose(p []float32, k int, ids []string) []Hit {
	top := topK{k: k, worst: -1}
	if ids == nil {
		for id, v := range x.loose {
			top.offer(Hit{ID: id, Score: x.score(p, v)})
		}
	} else {
		for _, id := range ids {
			if v, ok := x.loose[id]; ok {
				top.offer(Hit{ID: id, Score: x.score(p, v)})
			}
		}
	}
	sortHits(top.hits)
	return top.hits
}

// topK keeps the k best hits offered.
type topK struct {
	k     int
	hits  []Hit
	worst int // index of the worst kept hit, -1 when unknown
}

func (t *topK) offer(h Hit) {
	if len(t.hits) < t.k {
		t.hits = append(t.hits, h)
		t.worst = -1
		return
	}
	if t.worst < 0 {
		t.worst = 0
		for i := range t.hits {
			if less(t.hits[i], t.hits[t.worst]) {
				t.worst = i
			}
		}
	}
	if less(t.hits[t.worst], h) {
		t.hits[t.worst] = h
		t.worst = -1
	}
}

func sortHits(hits []Hit) { sort.Slice(hits, func(i, j int) bool { return less(hits[j], hits[i]) }) }

// less orders hits worst first: lower score, then larger id.
func less(a, b Hit) bool {
	if a.Score != b.Score {
		return a.Score < b.Score
	}
	return a.ID > b.ID
}
