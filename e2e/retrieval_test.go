package e2e

import (
	"encoding/json"
	"fmt"
	"github.com/shoal-mesh/shoal/api"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/shoal-mesh/shoal/e2e/testmesh"
	"github.com/shoal-mesh/shoal/inference/onnxmodel"
	"github.com/shoal-mesh/shoal/peer"
)

// publishEmbedder pushes the hash embedder and its tokenizer as emb@v1.
func publishEmbedder(t *testing.T, n *peer.Node, name string) string {
	t.Helper()
	push(t, n, name, "v1", onnxmodel.HashEmbedder(8192, 384, 1), onnxQuery+"&activate=true")
	tok, err := os.ReadFile(testmesh.RepoFile("deps/models/minilm-tokenizer.json"))
	if err != nil {
		t.Fatalf("tokenizer missing (%v): run `make setup`", err)
	}
	return push(t, n, name+api.TokenizerSuffix, "v1", tok, "media_type="+url.QueryEscape(api.MediaTypeTokenizer))
}

func createCollection(t *testing.T, n *peer.Node, name, embedder, token string) string {
	t.Helper()
	body, _ := json.Marshal(api.CreateCollectionRequest{Name: name, Embedder: embedder})
	res := do(t, http.MethodPost, baseURL(n)+"/v1/collections", body, api.HeaderAfter, token)
	if res.code != http.StatusCreated {
		t.Fatalf("create collection: %d %s", res.code, res.body)
	}
	return res.header.Get(api.HeaderToken)
}

// docText is a distinct text per document: shared words make neighbours,
// the numbered words make each one its own nearest neighbour.
func docText(i int) string {
	topics := []string{"solar inverter telemetry", "conveyor belt vibration", "camera frame analytics", "cold chain temperature", "forklift battery health"}
	return fmt.Sprintf("Report %d on %s at site %d, shift %d, line %d.", i, topics[i%len(topics)], i/7, i%3, i%11)
}

func query(t *testing.T, n *peer.Node, c string, q api.QueryRequest, headers ...string) (api.QueryResponse, httpResult) {
	t.Helper()
	body, _ := json.Marshal(q)
	res := do(t, http.MethodPost, baseURL(n)+"/v1/collections/"+c+"/query", body, headers...)
	var out api.QueryResponse
	if res.code == http.StatusOK {
		res.json(t, &out)
	}
	return out, res
}

func ptr[T any](v T) *T { return &v }

func TestRetrievalAcrossPeers(t *testing.T) {
	m := startMesh(t, 3, nil)
	tok := publishEmbedder(t, m.Node(0), "emb")
	tok = createCollection(t, m.Node(0), "reports", "emb@v1", tok)

	// 1,000 documents on peer 1, in batches.
	const total = 1000
	for start := 0; start < total; start += 250 {
		var docs []api.DocRequest
		for i := start; i < start+250; i++ {
			docs = append(docs, api.DocRequest{ID: fmt.Sprintf("r%04d", i), Text: docText(i), Metadata: map[string]string{"site": fmt.Sprint(i / 7 % 5)}})
		}
		body, _ := json.Marshal(map[string]any{"docs": docs})
		res := do(t, http.MethodPost, baseURL(m.Node(0))+"/v1/collections/reports/docs", body)
		if res.code != http.StatusOK {
			t.Fatalf("add docs: %d %s", res.code, res.body)
		}
		tok = res.header.Get(api.HeaderToken)
	}
	// The embedder (12 MiB) is activated, so every peer fetches it in the
	// background; on a loaded CI machine that can outlast a query's
	// default 10 s wait, which would answer 503 with Retry-After (correct,
	// but not what this test is about).
	eventually(t, "every peer serves the embedder", func() error {
		for _, n := range m.Nodes() {
			if v, _ := n.Serving("emb"); v != "v1" {
				return fmt.Errorf("%s serving emb %q", n.ID(), v)
			}
		}
		return nil
	})
	// Peer 3, with the token: every document is found by its own text.
	far := m.Node(2)
	for i := 0; i < total; i++ {
		out, res := query(t, far, "reports", api.QueryRequest{Text: docText(i), K: ptr(3)}, api.HeaderAfter, tok)
		if res.code != http.StatusOK {
			t.Fatalf("query %d: %d %s", i, res.code, res.body)
		}
		if len(out.Results) == 0 || out.Results[0].ID != fmt.Sprintf("r%04d", i) {
			t.Fatalf("document r%04d not found first: %+v", i, out.Results)
		}
		if i == 0 && (out.Index.Documents != total || out.Embedder != "emb@v1" || out.Results[0].Metadata["site"] != "0") {
			t.Errorf("freshness/embedder/metadata: %+v", out)
		}
	}
	// Filters.
	out, _ := query(t, far, "reports", api.QueryRequest{Text: "camera frame analytics", K: ptr(20), Filter: map[string]string{"site": "3"}})
	if len(out.Results) != 20 {
		t.Errorf("filtered query returned %d", len(out.Results))
	}
	for _, r := range out.Results {
		if r.Metadata["site"] != "3" {
			t.Errorf("filter let %s (site %s) through", r.ID, r.Metadata["site"])
		}
	}

	// Delete 100 on peer 2: gone everywhere after convergence.
	for i := 0; i < 100; i++ {
		res := do(t, http.MethodDelete, fmt.Sprintf("%s/v1/collections/reports/docs/r%04d", baseURL(m.Node(1)), i*10), nil, api.HeaderAfter, tok)
		if res.code != http.StatusOK {
			t.Fatalf("delete: %d %s", res.code, res.body)
		}
		tok = res.header.Get(api.HeaderToken)
	}
	for p := 0; p < 3; p++ {
		n := m.Node(p)
		for i := 0; i < 100; i++ {
			id := fmt.Sprintf("r%04d", i*10)
			out, res := query(t, n, "reports", api.QueryRequest{Text: docText(i * 10), K: ptr(5)}, api.HeaderAfter, tok)
			if res.code != http.StatusOK {
				t.Fatalf("peer %d query: %d %s", p, res.code, res.body)
			}
			for _, r := range out.Results {
				if r.ID == id {
					t.Fatalf("peer %d still returns deleted %s", p, id)
				}
			}
			if out.Index.Documents != total-100 {
				t.Fatalf("peer %d index holds %d documents", p, out.Index.Documents)
			}
		}
		if r := do(t, "GET", baseURL(n)+"/v1/collections/reports/docs/r0000", nil); r.code != http.StatusNotFound {
			t.Errorf("peer %d: deleted document readable: %d", p, r.code)
		}
	}

	if docs := metricValue(t, far, "shoal_rag_documents", map[string]string{"collection": "reports"}); docs != total-100 {
		t.Errorf("shoal_rag_documents %v", docs)
	}
	if hits := metricValue(t, far, "shoal_embedding_cache_requests_total", map[string]string{"result": "hit"}); hits < 100 {
		t.Errorf("embedding cache hits %v: the deleted documents' texts were embedded before", hits)
	}

	// Concurrent updates of one document on two peers converge.
	var wg sync.WaitGroup
	for p, text := range map[int]string{0: "Updated on peer one: solar inverter replaced.", 1: "Updated on peer two: conveyor belt realigned."} {
		wg.Add(1)
		go func(p int, text string) {
			defer wg.Done()
			body, _ := json.Marshal(api.DocRequest{Text: text})
			if res := do(t, http.MethodPut, baseURL(m.Node(p))+"/v1/collections/reports/docs/r0001", body); res.code != http.StatusOK {
				t.Errorf("update on %d: %d %s", p, res.code, res.body)
			}
		}(p, text)
	}
	wg.Wait()
	eventually(t, "the concurrent updates converge", func() error {
		var docs [3]struct{ Text, Vector string }
		for p := 0; p < 3; p++ {
			do(t, "GET", baseURL(m.Node(p))+"/v1/collections/reports/docs/r0001", nil).json(t, &docs[p])
		}
		if docs[0] != docs[1] || docs[1] != docs[2] || !strings.HasPrefix(docs[0].Text, "Updated") {
			return fmt.Errorf("texts %q / %q / %q", docs[0].Text, docs[1].Text, docs[2].Text)
		}
		for p := 0; p < 3; p++ {
			out, _ := query(t, m.Node(p), "reports", api.QueryRequest{Text: docs[0].Text, K: ptr(1)})
			if len(out.Results) == 0 || out.Results[0].ID != "r0001" || out.Results[0].Text != docs[0].Text {
				return fmt.Errorf("peer %d ranks %+v", p, out.Results)
			}
		}
		return nil
	})

	// Restart: the index is rebuilt from Badger and answers the same top-k.
	probes := []string{"camera frame analytics at site 4", "battery health", docText(555)}
	before := map[string]string{}
	for _, q := range probes {
		out, _ := query(t, far, "reports", api.QueryRequest{Text: q, K: ptr(10)})
		b, _ := json.Marshal(out.Results)
		before[q] = string(b)
	}
	if err := m.Stop(2); err != nil {
		t.Fatal(err)
	}
	if err := m.Restart(t.Context(), 2); err != nil {
		t.Fatal(err)
	}
	for _, q := range probes {
		var got string
		eventually(t, "restarted peer answers", func() error {
			out, res := query(t, m.Node(2), "reports", api.QueryRequest{Text: q, K: ptr(10)})
			if res.code != http.StatusOK {
				return fmt.Errorf("%d %s", res.code, res.body)
			}
			b, _ := json.Marshal(out.Results)
			got = string(b)
			return nil
		})
		if got != before[q] {
			t.Errorf("after restart %q ranks\n%s\nbefore\n%s", q, got, before[q])
		}
	}

	checkTruncationAnswered(t, m)
}

// checkTruncationAnswered: a text past the embedder's 256-token limit is
// embedded truncated, and every answer that embedded it says so — the
// document write (not for a caller-given vector), a query on another peer,
// and /v1/embeddings (from the embedding cache, where the write left it).
func checkTruncationAnswered(t *testing.T, m *testmesh.Mesh) {
	t.Helper()
	long := strings.Repeat("The pump bearing runs hot after the night shift. ", 30) // 300 words
	given := make([]float32, 384)
	given[0] = 1
	body, _ := json.Marshal(api.DocsRequest{Docs: []api.DocRequest{{ID: "long", Text: long}, {ID: "short", Text: "A short note."}, {ID: "given", Text: long, Vector: given}}})
	res := do(t, http.MethodPost, baseURL(m.Node(0))+"/v1/collections/reports/docs", body)
	var batch, one api.DocsResult
	if res.json(t, &batch); res.code != http.StatusOK || !slices.Equal(batch.Truncated, []string{"long"}) {
		t.Errorf("batch with a long text: %d %s, want truncated [long]", res.code, truncate(res.body))
	}
	body, _ = json.Marshal(api.DocRequest{Text: long})
	res = do(t, http.MethodPut, baseURL(m.Node(0))+"/v1/collections/reports/docs/long2", body)
	if res.json(t, &one); res.code != http.StatusOK || !slices.Equal(one.Truncated, []string{"long2"}) {
		t.Errorf("one long document: %d %s, want truncated [long2]", res.code, truncate(res.body))
	}
	out, res := query(t, m.Node(2), "reports", api.QueryRequest{Text: long, K: ptr(2)}, api.HeaderAfter, one.Token)
	if res.code != http.StatusOK || !out.QueryTruncated || len(out.Results) != 2 || !strings.HasPrefix(out.Results[0].ID, "long") {
		t.Errorf("long query: %d %s, want query_truncated and the long documents first", res.code, truncate(res.body))
	}
	if _, res := query(t, m.Node(2), "reports", api.QueryRequest{Text: "a short note"}); strings.Contains(string(res.body), "query_truncated") {
		t.Errorf("short query: %s", truncate(res.body))
	}
	body, _ = json.Marshal(map[string]any{"model": "emb@v1", "input": []string{long, "a short note"}})
	res = do(t, http.MethodPost, baseURL(m.Node(0))+"/v1/embeddings", body)
	var emb struct{ Data []map[string]any }
	if res.json(t, &emb); res.header.Get(api.HeaderTruncated) != "1" || len(emb.Data) != 2 || emb.Data[0]["truncated"] != true || emb.Data[1]["truncated"] != nil {
		t.Errorf("embeddings: %s %q, want the first input truncated", api.HeaderTruncated, res.header.Get(api.HeaderTruncated))
	}
}

func TestRetrievalBadInput(t *testing.T) {
	m := startMesh(t, 2, nil)
	n := m.Node(0)
	tok := publishEmbedder(t, n, "emb")
	tok = createCollection(t, n, "notes", "emb@v1", tok)
	big := strings.Repeat("word ", 20000)
	for _, tc := range []struct {
		name, method, path, body string
		code                     int
		msg                      string
		api                      string
	}{
		{"unknown collection", "POST", "/v1/collections/nope/query", `{"text":"x"}`, 404, "unknown collection", api.CodeCollectionUnknown},
		{"wrong vector dimension (query)", "POST", "/v1/collections/notes/query", `{"vector":[1,2,3]}`, 400, "dimension 384", api.CodeDocumentInvalid},
		{"wrong vector dimension (doc)", "PUT", "/v1/collections/notes/docs/a", `{"text":"t","vector":[1,2,3]}`, 400, "dimension 384", api.CodeDocumentInvalid},
		{"empty text", "PUT", "/v1/collections/notes/docs/a", `{"text":"   "}`, 400, "empty", api.CodeDocumentInvalid},
		{"k zero", "POST", "/v1/collections/notes/query", `{"text":"x","k":0}`, 400, "k 0", api.CodeQueryInvalid},
		{"k huge", "POST", "/v1/collections/notes/query", `{"text":"x","k":100000}`, 400, "k 100000", api.CodeQueryInvalid},
		{"text and vector", "POST", "/v1/collections/notes/query", `{}`, 400, "exactly one", api.CodeQueryInvalid},
		{"oversized document", "PUT", "/v1/collections/notes/docs/a", `{"text":"` + big + `"}`, 413, "at most", api.CodeDocumentTooLarge},
		{"bad id", "PUT", "/v1/collections/notes/docs/a%2Fb", `{"text":"t"}`, 400, "", api.CodeNameInvalid},
		{"delete unknown doc", "DELETE", "/v1/collections/notes/docs/zzz", ``, 404, "unknown document", api.CodeDocumentUnknown},
		{"unknown field", "POST", "/v1/collections/notes/query", `{"txt":"x"}`, 400, "unknown field", api.CodeBodyMalformed},
		{"embedder version unknown", "POST", "/v1/collections", `{"name":"c2","embedder":"emb@v9"}`, 404, "unknown model version", api.CodeVersionUnknown},
		{"bad embedder ref", "POST", "/v1/collections", `{"name":"c3","embedder":"emb"}`, 400, "model@version", api.CodeCollectionInvalid},
		{"same name, other spec", "POST", "/v1/collections", `{"name":"notes","embedder":"emb@v1","dimension":12}`, 409, "exists", api.CodeCollectionExists},
		{"embeddings: empty input", "POST", "/v1/embeddings", `{"model":"emb@v1","input":""}`, 400, "empty", api.CodeQueryInvalid},
		{"embeddings: bad input type", "POST", "/v1/embeddings", `{"model":"emb@v1","input":{"a":1}}`, 400, "string or an array", api.CodeQueryInvalid},
		{"embeddings: unknown model", "POST", "/v1/embeddings", `{"model":"nope@v1","input":"x"}`, 404, "unknown model", api.CodeModelUnknown},
		{"embeddings: not an embedder", "POST", "/v1/embeddings", `{"model":"emb.tokenizer@v1","input":"x"}`, 400, "not an ONNX model", api.CodeModelNotONNX},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := do(t, tc.method, baseURL(n)+tc.path, []byte(tc.body), api.HeaderAfter, tok)
			if res.code != tc.code || res.errCode() != tc.api || !strings.Contains(res.errMsg(), tc.msg) || res.errMsg() == "" {
				t.Errorf("%d %s, want %d %s with %q", res.code, truncate(res.body), tc.code, tc.api, tc.msg)
			}
		})
	}
	// Nothing was lost: the collection still works and holds nothing stray.
	body, _ := json.Marshal(api.DocRequest{Text: "a real note"})
	if res := do(t, http.MethodPut, baseURL(n)+"/v1/collections/notes/docs/ok", body); res.code != http.StatusOK {
		t.Fatalf("good write after bad ones: %d %s", res.code, res.body)
	}
	out, _ := query(t, n, "notes", api.QueryRequest{Text: "a real note"})
	if len(out.Results) != 1 || out.Results[0].ID != "ok" {
		t.Errorf("collection after bad input: %+v", out.Results)
	}

	// An embedder version that is known but cannot be fetched in time: 503.
	tok = publishEmbedder(t, n, "emb2")
	if res := do(t, "GET", baseURL(m.Node(1))+"/v1/models/emb2", nil, api.HeaderAfter, tok); res.code != 200 {
		t.Fatalf("peer 2 does not know emb2: %d", res.code)
	}
	m.Isolate(0)
	res := do(t, "POST", baseURL(m.Node(1))+"/v1/embeddings", []byte(`{"model":"emb2@v1","input":"hello"}`), api.HeaderTimeout, "2")
	if res.code != http.StatusServiceUnavailable || res.header.Get("Retry-After") == "" {
		t.Errorf("embedder not local and unreachable: %d %s", res.code, res.body)
	}
}

// TestOpenAIClientGetsEmbeddings points the official openai npm package
// (fetched by `make setup`) at a peer.
func TestOpenAIClientGetsEmbeddings(t *testing.T) {
	if _, err := exec.LookPath("node"); err != nil {
		t.Fatal("node is missing: `make setup` installs it")
	}
	m := startMesh(t, 1, nil)
	n := m.Node(0)
	tok := publishEmbedder(t, n, "emb")
	do(t, "GET", baseURL(n)+"/v1/models/emb", nil, api.HeaderAfter, tok)
	script := `
const OpenAI = require(process.argv[1]);
const client = new OpenAI({ apiKey: "unused", baseURL: process.argv[2] + "/v1" });
(async () => {
  const r = await client.embeddings.create({ model: "emb@v1", input: ["edge gateways", "edge gateway fleet", "quarterly revenue"] });
  const f = await client.embeddings.create({ model: "emb@v1", input: "edge gateways", encoding_format: "float" });
  console.log(JSON.stringify({ model: r.model, n: r.data.length, dim: r.data[0].embedding.length,
    first: Array.from(r.data[0].embedding.slice(0, 4)), float: f.data[0].embedding.slice(0, 4), usage: r.usage,
    sims: [0, 2].map(j => r.data[1].embedding.reduce((s, x, i) => s + x * r.data[j].embedding[i], 0)) }));
})().catch(e => { console.error(e); process.exit(1); });`
	out, err := exec.Command("node", "-e", script, "--", testmesh.RepoFile("deps/node/node_modules/openai"), "http://"+n.APIAddr()).CombinedOutput()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, out)
	}
	var got struct {
		Model string
		N     int
		Dim   int
		First []float64
		Float []float64
		Usage struct {
			PromptTokens int `json:"prompt_tokens"`
		}
		Sims []float64
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if got.Model != "emb@v1" || got.N != 3 || got.Dim != 384 || got.Usage.PromptTokens == 0 {
		t.Errorf("openai client saw %+v", got)
	}
	for i := range got.First {
		if d := got.First[i] - got.Float[i]; d > 1e-6 || d < -1e-6 {
			t.Errorf("base64 and float encodings differ: %v vs %v", got.First, got.Float)
		}
	}
	if got.Sims[0] <= got.Sims[1] {
		t.Errorf("related texts %.3f not closer than unrelated %.3f", got.Sims[0], got.Sims[1])
	}
}

// TestEmbedderMatchesAnIndependentReference: the peer's /v1/embeddings
// (sugarme/tokenizer + Shoal's pooling + onnxruntime via onnxruntime_go)
// against Hugging Face's JavaScript tokenizer and onnxruntime-node's own
// binding computing the same model (e2e/testdata/reference-embed.js).
func TestEmbedderMatchesAnIndependentReference(t *testing.T) {
	if _, err := exec.LookPath("node"); err != nil {
		t.Fatal("node is missing: `make setup` installs it")
	}
	m := startMesh(t, 1, nil)
	n := m.Node(0)
	tok := publishEmbedder(t, n, "emb")
	texts := []string{
		"The cat sits on the mat.",
		"Edge gateways replicate model versions without a leader.",
		"Quarterly revenue grew by ten percent, driven by new installations.",
		"Ünïcödé, punctuation — and MIXED case: tokenizers differ here first!",
		strings.Repeat("a long maintenance manual sentence ", 20),
	}
	model := filepath.Join(t.TempDir(), "emb.onnx")
	os.WriteFile(model, onnxmodel.HashEmbedder(8192, 384, 1), 0o600)
	textsJSON, _ := json.Marshal(texts)
	cmd := exec.Command("node", testmesh.RepoFile("e2e/testdata/reference-embed.js"), model, testmesh.RepoFile("deps/models/minilm-tokenizer.json"), string(textsJSON))
	cmd.Env = append(os.Environ(), "NODE_PATH="+testmesh.RepoFile("deps/node/node_modules"))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("reference: %v\n%s", err, out)
	}
	var ref []struct {
		IDs       []int     `json:"ids"`
		Embedding []float64 `json:"embedding"`
	}
	if err := json.Unmarshal(out, &ref); err != nil || len(ref) != len(texts) {
		t.Fatalf("reference output: %v %s", err, out)
	}
	body, _ := json.Marshal(map[string]any{"model": "emb@v1", "input": texts})
	res := do(t, http.MethodPost, baseURL(n)+"/v1/embeddings", body, api.HeaderAfter, tok)
	var got struct {
		Data []struct {
			Index     int       `json:"index"`
			Embedding []float64 `json:"embedding"`
		} `json:"data"`
	}
	res.json(t, &got)
	if res.code != http.StatusOK || len(got.Data) != len(texts) {
		t.Fatalf("embeddings: %d %s", res.code, truncate(res.body))
	}
	for i := range texts {
		a, b := got.Data[i].Embedding, ref[i].Embedding
		if len(a) != len(b) {
			t.Fatalf("text %d: dimension %d vs reference %d", i, len(a), len(b))
		}
		var dot float64
		for j := range a {
			dot += a[j] * b[j]
		}
		if dot < 0.99 {
			t.Errorf("text %d (%d reference tokens): cosine with the reference %.4f < 0.99", i, len(ref[i].IDs), dot)
		}
	}
}
