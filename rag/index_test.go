package rag

import (
	"errors"
	"fmt"
	"maps"
	"math/rand"
	"slices"
	"sync"
	"testing"
)

// clustered returns n vectors of dim components around 32 random centres.
func clustered(n, dim int, seed int64) [][]float32 {
	r := rand.New(rand.NewSource(seed))
	centres := make([][]float32, 32)
	for i := range centres {
		centres[i] = make([]float32, dim)
		for j := range centres[i] {
			centres[i][j] = float32(r.NormFloat64())
		}
	}
	out := make([][]float32, n)
	for i := range out {
		c := centres[r.Intn(len(centres))]
		out[i] = make([]float32, dim)
		for j := range out[i] {
			out[i][j] = c[j] + 0.35*float32(r.NormFloat64())
		}
	}
	return out
}

func recall(t *testing.T, x *Index, queries [][]float32, k int) float64 {
	t.Helper()
	found, total := 0, 0
	for _, q := range queries {
		want := map[string]bool{}
		for _, h := range x.Exact(q, k) {
			want[h.ID] = true
		}
		got, err := x.Search(q, k, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range got {
			if want[h.ID] {
				found++
			}
		}
		total += k
	}
	return float64(found) / float64(total)
}

func TestIndexRecallUpdatesAndDeletes(t *testing.T) {
	for _, metric := range []string{"cosine", "dot", "l2"} {
		t.Run(metric, func(t *testing.T) {
			all := clustered(1600, 32, 7)
			vecs, queries := all[:1500], all[1500:]
			x := NewIndex(32, metric)
			x.ExactBelow = 100
			for i, v := range vecs {
				if err := x.Upsert(fmt.Sprintf("d%05d", i), v); err != nil {
					t.Fatal(err)
				}
			}
			if r := recall(t, x, queries, 10); r < 0.93 {
				t.Errorf("recall@10 %.3f < 0.93", r)
			}
			// The nearest neighbour of a stored vector is itself.
			hits, _ := x.Search(vecs[42], 1, nil)
			if want := x.Exact(vecs[42], 1); len(hits) != 1 || hits[0].ID != want[0].ID || (metric != "dot" && hits[0].ID != "d00042") {
				t.Errorf("self search: %+v, exact %+v", hits, want)
			}
			// Update moves a document; delete removes it.
			x.Upsert("d00042", queries[0])
			if metric != "dot" { // by dot product a longer vector can beat the query itself
				if hits, _ := x.Search(queries[0], 1, nil); hits[0].ID != "d00042" {
					t.Errorf("updated vector not found: %+v", hits)
				}
			}
			for i := 0; i < 500; i++ {
				x.Delete(fmt.Sprintf("d%05d", i))
			}
			if x.Len() != 1000 {
				t.Errorf("len %d", x.Len())
			}
			for _, q := range queries[:20] {
				hits, _ := x.Search(q, 10, nil)
				for _, h := range hits {
					var n int
					fmt.Sscanf(h.ID, "d%05d", &n)
					if n < 500 {
						t.Fatalf("deleted %s returned", h.ID)
					}
				}
			}
			if r := recall(t, x, queries, 10); r < 0.93 {
				t.Errorf("recall@10 after deletes %.3f < 0.93", r)
			}
			// Filters are exact.
			hits, _ = x.Search(queries[1], 5, suffixFilter(x, '7'))
			for _, h := range hits {
				if h.ID[len(h.ID)-1] != '7' {
					t.Errorf("filter let %s through", h.ID)
				}
			}
			if len(hits) != 5 {
				t.Errorf("%d filtered hits", len(hits))
			}
			if _, err := x.Search(make([]float32, 3), 1, nil); err == nil {
				t.Error("wrong query dimension accepted")
			}
		})
	}
}

func TestIndexConcurrentUse(t *testing.T) {
	vecs := clustered(1200, 16, 3)
	x := NewIndex(16, "cosine")
	x.ExactBelow = 100
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < len(vecs); i += 4 {
				x.Upsert(fmt.Sprintf("d%d", i%500), vecs[i])
				if i%7 == 0 {
					x.Delete(fmt.Sprintf("d%d", (i+3)%500))
				}
				if _, err := x.Search(vecs[i], 5, nil); err != nil {
					t.Error(err)
				}
			}
		}(w)
	}
	wg.Wait()
	if x.Len() > 500 {
		t.Errorf("len %d > 500 distinct ids", x.Len())
	}
	x.mu.RLock()
	keys := maps.Clone(x.keyOf)
	x.mu.RUnlock()
	for id, l := range keys {
		v := make([]float32, 16)
		if err := x.graph.vector(l, v); err != nil {
			t.Fatal(err)
		}
		hits, _ := x.Search(v, 1, nil)
		if len(hits) == 0 || hits[0].Score < 0.999 {
			t.Errorf("%s: self search %+v", id, hits)
			break
		}
	}
}

// TestUpsertAllMatchesOneByOne: a bulk load (the graph built on every
// core) answers like vectors added one at a time, and later upserts and
// deletes keep working on it.
func TestUpsertAllMatchesOneByOne(t *testing.T) {
	const n, dim = 3000, 32
	ids, vs := randomVectors(n, dim, 7)
	x := NewIndex(dim, "cosine")
	x.ExactBelow = 100
	if err := x.UpsertAll(ids, vs); err != nil {
		t.Fatal(err)
	}
	if x.Len() != n || x.GraphBytes() <= 0 {
		t.Fatalf("len %d, graph bytes %d", x.Len(), x.GraphBytes())
	}
	queries := vs[:50]
	if got := recall(t, x, queries, 10); got < 0.93 {
		t.Errorf("recall@10 after a bulk load %.3f < 0.93", got)
	}
	if err := x.UpsertAll([]string{"a"}, [][]float32{{1}}); err == nil {
		t.Error("a vector of the wrong dimension was taken")
	}
	x.Delete(ids[0])
	x.Upsert(ids[1], vs[2])
	hits, err := x.Search(vs[2], 2, nil)
	if err != nil || len(hits) != 2 || hits[0].Score < 0.999 || hits[1].Score < 0.999 {
		t.Errorf("after an update, the two copies of a vector: %+v %v", hits, err)
	}
	for _, h := range hits {
		if h.ID == ids[0] {
			t.Errorf("a deleted id was found: %+v", hits)
		}
	}
}

// suffixFilter allows the ids of x ending in c.
func suffixFilter(x *Index, c byte) *Filter {
	f := &Filter{Allow: func(id string) bool { return id[len(id)-1] == c }}
	x.mu.RLock()
	defer x.mu.RUnlock()
	ids := slices.Collect(maps.Keys(x.keyOf))
	if x.loose != nil {
		ids = slices.Collect(maps.Keys(x.loose))
	}
	for _, id := range ids {
		if f.Allow(id) {
			f.IDs = append(f.IDs, id)
		}
	}
	return f
}

// TestFilteredSearch: a filter that leaves many candidates is searched in
// the graph (widened, then filtered) and one that leaves few is compared
// exactly; both return only allowed ids, and their recall against an
// exact filtered search stays high. Vectors are held once: in the graph.
func TestFilteredSearch(t *testing.T) {
	ids, vs := randomVectors(6000, 32, 21)
	x := NewIndex(32, "cosine")
	x.ExactBelow = 500
	if err := x.UpsertAll(ids, vs); err != nil {
		t.Fatal(err)
	}
	if x.loose != nil {
		t.Fatal("the built index still holds its vectors in the Go heap")
	}
	for _, c := range []byte{'7', '3'} {
		wide := suffixFilter(x, c) // a tenth: 600 candidates, searched in the graph
		narrow := &Filter{IDs: wide.IDs[:300], Allow: nil}
		set := map[string]bool{}
		for _, id := range narrow.IDs {
			set[id] = true
		}
		narrow.Allow = func(id string) bool { return set[id] }
		for _, f := range []*Filter{wide, narrow} {
			found, total := 0, 0
			for _, q := range vs[:40] {
				hits, err := x.Search(q, 10, f)
				if err != nil || len(hits) != 10 {
					t.Fatalf("filtered search: %d hits, %v", len(hits), err)
				}
				truth := map[string]bool{}
				x.mu.RLock()
				exact, _ := x.exactLocked(x.prepare(q), 10, f.IDs)
				x.mu.RUnlock()
				for _, h := range exact {
					truth[h.ID] = true
				}
				for _, h := range hits {
					if !f.Allow(h.ID) {
						t.Fatalf("the filter let %s through", h.ID)
					}
					if truth[h.ID] {
						found++
					}
				}
				total += len(exact)
			}
			if r := float64(found) / float64(total); r < 0.95 {
				t.Errorf("filtered recall@10 with %d candidates: %.3f < 0.9", len(f.IDs), r)
			}
		}
	}
}

// TestUpsertManyReplacesAndKeepsTheLast: a run of upserts added together
// replaces earlier vectors (no id found twice), keeps the last of an id
// given twice, and works while the vectors are loose too.
func TestUpsertManyReplacesAndKeepsTheLast(t *testing.T) {
	ids, vs := randomVectors(2000, 16, 31)
	for _, loose := range []bool{false, true} {
		x := NewIndex(16, "cosine")
		x.ExactBelow = 100
		if err := x.UpsertAll(ids[:1000], vs[:1000]); err != nil {
			t.Fatal(err)
		}
		if loose {
			x.BeginBulk()
		}
		// ids[0..99] get new vectors; ids[1000..1099] are new; ids[5] twice.
		run := append(slices.Clone(ids[:100]), ids[1000:1100]...)
		vecs := append(slices.Clone(vs[1100:1200]), vs[1000:1100]...)
		run, vecs = append(run, ids[5]), append(vecs, vs[1999])
		if err := x.UpsertMany(run, vecs); err != nil {
			t.Fatal(err)
		}
		if x.Len() != 1100 {
			t.Errorf("loose %v: len %d, want 1100", loose, x.Len())
		}
		for _, c := range []struct {
			q    []float32
			want string
		}{{vs[1100+7], ids[7]}, {vs[1050], ids[1050]}, {vs[1999], ids[5]}, {vs[1105], ids[5]}} {
			hits, _ := x.Search(c.q, 2, nil)
			if c.want == ids[5] && c.q[0] == vs[1105][0] {
				// ids[5]'s first vector of the run was overridden by the last.
				if len(hits) > 0 && hits[0].ID == ids[5] && hits[0].Score > 0.999 {
					t.Errorf("loose %v: the overridden vector of %s is still found", loose, ids[5])
				}
				continue
			}
			if len(hits) != 2 || hits[0].ID != c.want || hits[1].ID == c.want {
				t.Errorf("loose %v: nearest to the vector of %s: %+v", loose, c.want, hits)
			}
		}
	}
}

// TestInt8Index: an int8 index holds about a quarter of the vector bytes,
// finds the float index's nearest neighbours (recall@10 against the float
// vectors' exact answer), reads back vectors within half a scale step,
// and its save is refused by a float index (and the other way round).
func TestInt8Index(t *testing.T) {
	ids, vs := randomVectors(4000, 64, 41)
	f := NewIndex(64, "cosine")
	q := NewIndexInt8(64)
	for _, x := range []*Index{f, q} {
		x.ExactBelow = 100
		if err := x.UpsertAll(ids, vs); err != nil {
			t.Fatal(err)
		}
	}
	if fb, qb := f.GraphBytes(), q.GraphBytes(); fb-qb < 4000*(64*3-4) {
		t.Errorf("int8 graph %d bytes against float %d: less than 3 bytes saved per component", qb, fb)
	}
	found, total := 0, 0
	for _, v := range vs[:100] {
		want := map[string]bool{}
		for _, h := range f.Exact(v, 10) {
			want[h.ID] = true
		}
		hits, err := q.Search(v, 10, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range hits {
			if want[h.ID] {
				found++
			}
		}
		total += 10
	}
	if r := float64(found) / float64(total); r < 0.95 {
		t.Errorf("int8 recall@10 against exact float search %.3f < 0.95", r)
	}
	back := make([]float32, 64)
	if err := q.graph.vector(q.keyOf[ids[3]], back); err != nil {
		t.Fatal(err)
	}
	p := q.prepare(vs[3])
	var m float32
	for _, c := range p {
		m = max(m, c, -c)
	}
	for i := range back {
		if d := back[i] - p[i]; d > m/254+1e-6 || d < -m/254-1e-6 {
			t.Fatalf("component %d read back as %f, stored %f", i, back[i], p[i])
		}
	}
	dir := t.TempDir()
	if err := q.Save(dir, "q", nil); err != nil {
		t.Fatal(err)
	}
	saved, err := ReadSaved(dir, "q")
	if err != nil {
		t.Fatal(err)
	}
	if err := NewIndex(64, "cosine").Install(dir, "q", saved); !errors.Is(err, ErrIndexStale) {
		t.Errorf("an int8 save installed into a float index: %v", err)
	}
	again := NewIndexInt8(64)
	if err := again.Install(dir, "q", saved); err != nil || again.Len() != 4000 {
		t.Fatalf("reinstalling the int8 save: %v, %d vectors", err, again.Len())
	}
	if hits, _ := again.Search(vs[9], 1, nil); len(hits) != 1 || hits[0].ID != ids[9] {
		t.Errorf("reopened int8 index: nearest to its own vector %+v", hits)
	}
}
