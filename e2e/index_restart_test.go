package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/shoal-mesh/shoal/api"
)

// TestIndexSurvivesRestart: a collection past the exact-search threshold
// (8,192 vectors) is answered after a clean restart from its saved graph —
// reopened, not built — and after its save is torn (a crash mid-save) or
// stale (older than the stored documents, as a kill -9 after writes leaves
// it) it answers exactly at once while the graph is built again in the
// background. Every answer is the exact top hit; a stale save never
// answers for a document updated or deleted after it.
func TestIndexSurvivesRestart(t *testing.T) {
	const n, dim = 9000, 16
	m := startMesh(t, 1, nil)
	node := m.Node(0)
	tok := publishEmbedder(t, node, "emb")
	body, _ := json.Marshal(api.CreateCollectionRequest{Name: "big", Embedder: "emb@v1", Dimension: dim})
	if res := do(t, http.MethodPost, baseURL(node)+"/v1/collections", body, api.HeaderAfter, tok); res.code != http.StatusCreated {
		t.Fatalf("create: %d %s", res.code, res.body)
	}
	r := rand.New(rand.NewSource(5))
	vecs := make([][]float32, n)
	for start := 0; start < n; start += api.MaxBatchDocs {
		var docs []api.DocRequest
		for i := start; i < min(start+api.MaxBatchDocs, n); i++ {
			vecs[i] = make([]float32, dim)
			for j := range vecs[i] {
				vecs[i][j] = float32(r.NormFloat64())
			}
			docs = append(docs, api.DocRequest{ID: fmt.Sprintf("v%05d", i), Text: "doc", Vector: vecs[i]})
		}
		b, _ := json.Marshal(api.DocsRequest{Docs: docs})
		res := do(t, http.MethodPost, baseURL(node)+"/v1/collections/big/docs", b)
		if res.code != http.StatusOK {
			t.Fatalf("docs: %d %s", res.code, truncate(res.body))
		}
		tok = res.header.Get(api.HeaderToken)
	}
	topHit := func(i int) {
		t.Helper()
		eventually(t, "the restarted peer answers", func() error {
			out, res := query(t, m.Node(0), "big", api.QueryRequest{Vector: vecs[i], K: ptr(1)}, api.HeaderAfter, tok)
			if res.code != http.StatusOK || len(out.Results) != 1 {
				return fmt.Errorf("%d %s", res.code, truncate(res.body))
			}
			if want := fmt.Sprintf("v%05d", i); out.Results[0].ID != want {
				t.Fatalf("query for %s answered %+v", want, out.Results)
			}
			return nil
		})
	}
	topHit(17)

	ctx := context.Background()
	if err := m.Stop(0); err != nil {
		t.Fatal(err)
	}
	if err := m.Restart(ctx, 0); err != nil {
		t.Fatal(err)
	}
	topHit(4321)
	if got := metricValue(t, m.Node(0), "shoal_rag_index_graphs_total", map[string]string{"how": "reopened"}); got != 1 {
		t.Errorf("graphs reopened after a clean restart: %v, want 1", got)
	}

	// A crash while saving: the graph file is cut short.
	if err := m.Stop(0); err != nil {
		t.Fatal(err)
	}
	graph := filepath.Join(m.DataDir(0), "index", "big.hnsw")
	info, err := os.Stat(graph)
	if err != nil {
		t.Fatalf("no saved graph after a clean stop: %v", err)
	}
	if err := os.Truncate(graph, info.Size()/3); err != nil {
		t.Fatal(err)
	}
	if err := m.Restart(ctx, 0); err != nil {
		t.Fatal(err)
	}
	topHit(8888) // exact while the graph is built again
	eventually(t, "the graph built again in the background", func() error {
		if got := metricValue(t, m.Node(0), "shoal_rag_index_graphs_total", map[string]string{"how": "built"}); got != 1 {
			return fmt.Errorf("built %v", got)
		}
		return nil
	})
	topHit(123)

	// A save older than the documents: save, keep a copy of it, write
	// (update one document, delete another), stop cleanly, and put the
	// old save back.
	if err := m.Stop(0); err != nil {
		t.Fatal(err)
	}
	indexDir := filepath.Join(m.DataDir(0), "index")
	old := copyDir(t, indexDir)
	if err := m.Restart(ctx, 0); err != nil {
		t.Fatal(err)
	}
	moved := make([]float32, dim)
	for j := range moved {
		moved[j] = float32(r.NormFloat64())
	}
	b, _ := json.Marshal(api.DocsRequest{Docs: []api.DocRequest{{ID: "v00017", Text: "doc", Vector: moved}}})
	res := do(t, http.MethodPost, baseURL(m.Node(0))+"/v1/collections/big/docs", b, api.HeaderAfter, tok)
	if res.code != http.StatusOK {
		t.Fatalf("update: %d %s", res.code, truncate(res.body))
	}
	tok = res.header.Get(api.HeaderToken)
	res = do(t, http.MethodDelete, baseURL(m.Node(0))+"/v1/collections/big/docs/v04321", nil, api.HeaderAfter, tok)
	if res.code != http.StatusOK {
		t.Fatalf("delete: %d %s", res.code, truncate(res.body))
	}
	tok = res.header.Get(api.HeaderToken)
	if err := m.Stop(0); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(indexDir)
	if err := os.Rename(old, indexDir); err != nil {
		t.Fatal(err)
	}
	if err := m.Restart(ctx, 0); err != nil {
		t.Fatal(err)
	}
	vecs[17] = moved
	topHit(17)
	out, qres := query(t, m.Node(0), "big", api.QueryRequest{Vector: vecs[4321], K: ptr(1)}, api.HeaderAfter, tok)
	if qres.code != http.StatusOK || len(out.Results) != 1 || out.Results[0].ID == "v04321" {
		t.Fatalf("query for a deleted document after a stale save: %d %+v", qres.code, out.Results)
	}
	if got := metricValue(t, m.Node(0), "shoal_rag_index_graphs_total", map[string]string{"how": "reopened"}); got != 0 {
		t.Errorf("a stale save was reopened (%v times)", got)
	}
	eventually(t, "the graph built again after a stale save", func() error {
		if got := metricValue(t, m.Node(0), "shoal_rag_index_graphs_total", map[string]string{"how": "built"}); got != 1 {
			return fmt.Errorf("built %v", got)
		}
		return nil
	})
	topHit(17)
}

// copyDir copies the files of dir into a new directory beside it.
func copyDir(t *testing.T, dir string) string {
	t.Helper()
	to := dir + ".copy"
	if err := os.CopyFS(to, os.DirFS(dir)); err != nil {
		t.Fatal(err)
	}
	return to
}
