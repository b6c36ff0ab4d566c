package rag

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
)

func randomVectors(n, dim int, seed int64) ([]string, [][]float32) {
	r := rand.New(rand.NewSource(seed))
	ids := make([]string, n)
	vs := make([][]float32, n)
	for i := range vs {
		ids[i] = fmt.Sprintf("d%05d", i)
		vs[i] = make([]float32, dim)
		for j := range vs[i] {
			vs[i][j] = float32(r.NormFloat64())
		}
	}
	return ids, vs
}

// bulkIndex is an index filled as the manager fills one at start-up:
// vectors only, the graph to be reopened or built.
func bulkIndex(t *testing.T, ids []string, vs [][]float32) *Index {
	t.Helper()
	x := NewIndex(len(vs[0]), "cosine")
	x.ExactBelow = 100
	x.bulk = true
	for i, id := range ids {
		if err := x.Upsert(id, vs[i]); err != nil {
			t.Fatal(err)
		}
	}
	return x
}

func searchAll(t *testing.T, x *Index, qs [][]float32) [][]Hit {
	t.Helper()
	var out [][]Hit
	for _, q := range qs {
		hits, err := x.Search(q, 10, nil)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, hits)
	}
	return out
}

// TestSavedGraphReopensOnlyForItsVectors: a saved graph reopens for the
// same vectors and answers exactly as the saved one did; for other
// vectors it is stale, a cut-short file is torn, no file is ErrNotExist —
// and in each of those cases the index answers exactly, never from the
// wrong graph.
func TestSavedGraphReopensOnlyForItsVectors(t *testing.T) {
	ids, vs := randomVectors(3000, 32, 11)
	orig := NewIndex(32, "cosine")
	orig.ExactBelow = 100
	if err := orig.UpsertAll(ids, vs); err != nil {
		t.Fatal(err)
	}
	orig.Delete(ids[5]) // a deleted node travels as a mark in the graph
	orig.Upsert(ids[6], vs[7])
	dir := t.TempDir()
	if err := orig.Save(dir, "c"); err != nil {
		t.Fatal(err)
	}
	liveIDs := slices.Delete(slices.Clone(ids), 5, 6)
	liveVs := slices.Delete(slices.Clone(vs), 5, 6)
	liveVs[5] = vs[7] // ids[6] now holds vs[7]
	qs := vs[100:130]
	want := searchAll(t, orig, qs)

	x := bulkIndex(t, liveIDs, liveVs)
	if err := x.Load(dir, "c"); err != nil {
		t.Fatalf("reopening the graph of the same vectors: %v", err)
	}
	if x.graph == nil || x.bulk || x.tombs != 2 {
		t.Fatalf("after Load: graph %v, bulk %v, tombstones %d (want 2: the delete and the replaced node)", x.graph != nil, x.bulk, x.tombs)
	}
	if got := searchAll(t, x, qs); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("the reopened graph answers differently:\n%v\nwant\n%v", got, want)
	}
	if hits, _ := x.Search(vs[5], 1, nil); len(hits) == 1 && hits[0].ID == ids[5] {
		t.Errorf("the deleted id came back: %+v", hits)
	}

	other := slices.Clone(liveVs)
	other[0] = vs[2999]
	stale := bulkIndex(t, liveIDs, other)
	if err := stale.Load(dir, "c"); !errors.Is(err, ErrIndexStale) || stale.graph != nil && !stale.bulk {
		t.Errorf("other vectors: err %v, want ErrIndexStale and no graph installed", err)
	}
	if err := bulkIndex(t, liveIDs, liveVs).Load(t.TempDir(), "c"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("nothing saved: err %v, want os.ErrNotExist", err)
	}

	graphPath, metaPath := indexPaths(dir, "c")
	info, _ := os.Stat(graphPath)
	if err := os.Truncate(graphPath, info.Size()/2); err != nil {
		t.Fatal(err)
	}
	torn := bulkIndex(t, liveIDs, liveVs)
	if err := torn.Load(dir, "c"); !errors.Is(err, ErrIndexTorn) {
		t.Errorf("a graph cut in half: err %v, want ErrIndexTorn", err)
	}
	// Torn or stale, the index still answers, exactly.
	if got := searchAll(t, torn, qs[:3]); fmt.Sprint(got) != fmt.Sprint(searchExact(torn, qs[:3])) {
		t.Errorf("a torn index does not answer exactly: %v", got)
	}
	os.WriteFile(metaPath, []byte("{not json"), 0o600)
	if err := bulkIndex(t, liveIDs, liveVs).Load(dir, "c"); !errors.Is(err, ErrIndexTorn) {
		t.Errorf("a corrupt meta file: err %v, want ErrIndexTorn", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "c.hnsw.tmp")); err == nil {
		t.Error("a temporary file was left behind")
	}
}

func searchExact(x *Index, qs [][]float32) [][]Hit {
	var out [][]Hit
	for _, q := range qs {
		out = append(out, x.Exact(q, 10))
	}
	return out
}

// TestBuildGraphWhileServing: the background build lets searches (exact
// meanwhile) and writes go on, and the graph it installs holds the writes
// made during the build.
func TestBuildGraphWhileServing(t *testing.T) {
	ids, vs := randomVectors(4000, 32, 12)
	x := bulkIndex(t, ids[:3000], vs[:3000])
	var done atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := x.BuildGraph(context.Background(), &done); err != nil {
			t.Error(err)
		}
	}()
	for i := 3000; i < 4000; i++ {
		if err := x.Upsert(ids[i], vs[i]); err != nil {
			t.Fatal(err)
		}
		if i%100 == 0 {
			if hits, err := x.Search(vs[i], 1, nil); err != nil || len(hits) != 1 || hits[0].ID != ids[i] {
				t.Fatalf("search during the build: %+v %v", hits, err)
			}
		}
	}
	wg.Wait()
	if x.graph == nil || x.bulk || done.Load() == 0 {
		t.Fatalf("after the build: graph %v, bulk %v, progress %d", x.graph != nil, x.bulk, done.Load())
	}
	if got := recall(t, x, vs[3900:3950], 10); got < 0.93 {
		t.Errorf("recall@10 of vectors written during the build %.3f < 0.93", got)
	}
	for _, i := range []int{3000, 3500, 3999} {
		if hits, _ := x.Search(vs[i], 1, nil); len(hits) != 1 || hits[0].ID != ids[i] {
			t.Errorf("vector %d written during the build is not its own nearest: %+v", i, hits)
		}
	}
}

// TestBuildGraphStopsWithItsContext: a build cut short by shutdown leaves
// the index without a graph, answering exactly.
func TestBuildGraphStopsWithItsContext(t *testing.T) {
	ids, vs := randomVectors(3000, 32, 13)
	x := bulkIndex(t, ids, vs)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var done atomic.Int64
	if err := x.BuildGraph(ctx, &done); !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
	if hits, err := x.Search(vs[9], 1, nil); err != nil || len(hits) != 1 || hits[0].ID != ids[9] {
		t.Errorf("search without a graph: %+v %v", hits, err)
	}
}
