package rag

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
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
	x.BeginBulk()
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

// TestSavedGraphInstalls: a saved graph, installed into an empty index,
// answers exactly as the saved one did, with its tombstones, and gives
// back the saver's state; a graph of another dimension is stale, a
// cut-short file or a corrupt meta is torn, no file is ErrNotExist — and
// in each of those cases nothing is installed.
func TestSavedGraphInstalls(t *testing.T) {
	ids, vs := randomVectors(3000, 32, 11)
	orig := NewIndex(32, "cosine")
	orig.ExactBelow = 100
	if err := orig.UpsertAll(ids, vs); err != nil {
		t.Fatal(err)
	}
	orig.Delete(ids[5]) // a deleted node travels as a mark in the graph
	orig.Upsert(ids[6], vs[7])
	dir := t.TempDir()
	if err := orig.Save(dir, "c", []byte(`{"mine":1}`)); err != nil {
		t.Fatal(err)
	}
	qs := vs[100:130]
	want := searchAll(t, orig, qs)

	saved, err := ReadSaved(dir, "c")
	if err != nil || string(saved.State()) != `{"mine":1}` || saved.Len() != 2999 {
		t.Fatalf("ReadSaved: %v, state %s, %d vectors", err, saved.State(), saved.Len())
	}
	x := NewIndex(32, "cosine")
	x.ExactBelow = 100
	if err := x.Install(dir, "c", saved); err != nil {
		t.Fatalf("installing the saved graph: %v", err)
	}
	if x.graph == nil || x.loose != nil || x.tombs != 2 || x.Len() != 2999 {
		t.Fatalf("after Install: graph %v, loose %v, tombstones %d (want 2: the delete and the replaced node), len %d",
			x.graph != nil, x.loose != nil, x.tombs, x.Len())
	}
	if got := searchAll(t, x, qs); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("the reopened graph answers differently:\n%v\nwant\n%v", got, want)
	}
	if hits, _ := x.Search(vs[5], 1, nil); len(hits) == 1 && hits[0].ID == ids[5] {
		t.Errorf("the deleted id came back: %+v", hits)
	}
	if err := x.Install(dir, "c", saved); err == nil {
		t.Error("installed over vectors already held")
	}
	if err := NewIndex(16, "cosine").Install(dir, "c", saved); !errors.Is(err, ErrIndexStale) {
		t.Errorf("another dimension: err %v, want ErrIndexStale", err)
	}
	if _, err := ReadSaved(t.TempDir(), "c"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("nothing saved: err %v, want os.ErrNotExist", err)
	}

	graphPath, metaPath := indexPaths(dir, "c")
	info, _ := os.Stat(graphPath)
	if err := os.Truncate(graphPath, info.Size()/2); err != nil {
		t.Fatal(err)
	}
	torn := NewIndex(32, "cosine")
	if err := torn.Install(dir, "c", saved); !errors.Is(err, ErrIndexTorn) || torn.Len() != 0 {
		t.Errorf("a graph cut in half: err %v (want ErrIndexTorn), %d vectors installed", err, torn.Len())
	}
	os.WriteFile(metaPath, []byte("{not json"), 0o600)
	if _, err := ReadSaved(dir, "c"); !errors.Is(err, ErrIndexTorn) {
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
	if x.graph == nil || x.loose != nil || done.Load() == 0 {
		t.Fatalf("after the build: graph %v, loose %v, progress %d", x.graph != nil, x.loose != nil, done.Load())
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
