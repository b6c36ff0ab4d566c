package httpapi

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/crdt"
	"github.com/shoal-mesh/shoal/crdt/collections"
	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/lifecycle"
	"github.com/shoal-mesh/shoal/rag"
	"github.com/shoal-mesh/shoal/store"
)

// embeddingsAnswer is the OpenAI embeddings answer, the vectors left raw.
type embeddingsAnswer struct {
	Object string `json:"object"`
	Data   []struct {
		Object    string          `json:"object"`
		Index     int             `json:"index"`
		Embedding json.RawMessage `json:"embedding"`
	} `json:"data"`
	Model string         `json:"model"`
	Usage map[string]int `json:"usage"`
}

var testVecs = [][]float32{{0.5, -1.25, 3}, {float32(math.Pi), 0, -0.001}}

// recordEmbed makes Embed answer testVecs[:len(texts)] as ref, and
// remember what it was asked.
func recordEmbed(h *harness) (*string, *[]string) {
	var ref string
	var texts []string
	h.ret.EmbedTextsFn = func(ctx context.Context, r string, tx []string) (rag.Embedding, error) {
		ref, texts = r, tx
		return rag.Embedding{Vectors: testVecs[:len(tx)], Truncated: make([]bool, len(tx)), Tokens: 7, Embedder: r}, nil
	}
	return &ref, &texts
}

func TestEmbeddingsFloat(t *testing.T) {
	h := newHarness(t)
	ref, texts := recordEmbed(h)
	var served string
	h.models.ServingVersionFn = func(ctx context.Context, m string) (string, error) { served = m; return "v3", nil }
	w := h.doJSON(t, "POST", "/v1/embeddings", `{"model":"minilm","input":["gearbox noise","bearing wear"],"user":"u1"}`)
	wantStatus(t, w, http.StatusOK)
	if served != "minilm" || *ref != "minilm@v3" || !reflect.DeepEqual(*texts, []string{"gearbox noise", "bearing wear"}) {
		t.Errorf("ServingVersion(%q), Embed(%q, %q)", served, *ref, *texts)
	}
	if v := w.Header().Get(api.HeaderModelVersion); v != "v3" {
		t.Errorf("%s = %q, want v3", api.HeaderModelVersion, v)
	}
	a := decode[embeddingsAnswer](t, w)
	if a.Object != "list" || a.Model != "minilm@v3" || a.Usage["prompt_tokens"] != 7 || a.Usage["total_tokens"] != 7 || len(a.Data) != 2 {
		t.Fatalf("answer = %+v", a)
	}
	for i, d := range a.Data {
		var v []float32
		if err := json.Unmarshal(d.Embedding, &v); err != nil {
			t.Fatalf("embedding %d is not a float array: %s", i, d.Embedding)
		}
		if d.Object != "embedding" || d.Index != i || !reflect.DeepEqual(v, testVecs[i]) {
			t.Errorf("data[%d] = %s %d %v, want %v", i, d.Object, d.Index, v, testVecs[i])
		}
	}

	// One string is one text; "float" is the default spelled out.
	h.doJSON(t, "POST", "/v1/embeddings", `{"model":"minilm","input":"one","encoding_format":"float"}`)
	if !reflect.DeepEqual(*texts, []string{"one"}) {
		t.Errorf("Embed got %q", *texts)
	}
}

func TestEmbeddingsBase64(t *testing.T) {
	h := newHarness(t)
	ref, _ := recordEmbed(h)
	w := h.doJSON(t, "POST", "/v1/embeddings", `{"model":"minilm@v1","input":["a","b"],"encoding_format":"base64","dimensions":3}`)
	wantStatus(t, w, http.StatusOK)
	if *ref != "minilm@v1" {
		t.Errorf("Embed(%q), want the pinned minilm@v1", *ref)
	}
	wantCalls(t, h.models.calls, map[string]int{"ServingVersion": 0})
	if v := w.Header().Get(api.HeaderModelVersion); v != "v1" {
		t.Errorf("%s = %q, want v1", api.HeaderModelVersion, v)
	}
	for i, d := range decode[embeddingsAnswer](t, w).Data {
		var s string
		if err := json.Unmarshal(d.Embedding, &s); err != nil {
			t.Fatalf("embedding %d is not a string: %s", i, d.Embedding)
		}
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil || len(b) != 4*len(testVecs[i]) {
			t.Fatalf("embedding %d: %d bytes, %v", i, len(b), err)
		}
		v := make([]float32, len(b)/4)
		for j := range v {
			v[j] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*j:]))
		}
		if !reflect.DeepEqual(v, testVecs[i]) {
			t.Errorf("embedding %d decodes to %v, want %v", i, v, testVecs[i])
		}
	}
}

// TestEmbeddingsTruncated: an input cut at the embedder's token limit is
// marked "truncated": true in its data item (the others carry no such
// field), and Shoal-Truncated counts them; an answer that cut nothing
// has neither.
func TestEmbeddingsTruncated(t *testing.T) {
	h := newHarness(t)
	cut := []bool{true, false, true}
	h.ret.EmbedTextsFn = func(ctx context.Context, r string, tx []string) (rag.Embedding, error) {
		return rag.Embedding{Vectors: [][]float32{{1, 0}, {0, 1}, {1, 1}}[:len(tx)], Truncated: cut[:len(tx)], Tokens: 9, Embedder: r}, nil
	}
	for _, format := range []string{"float", "base64"} {
		w := h.doJSON(t, "POST", "/v1/embeddings", `{"model":"minilm@v1","input":["long","short","long too"],"encoding_format":"`+format+`"}`)
		wantStatus(t, w, http.StatusOK)
		if v := w.Header().Get(api.HeaderTruncated); v != "2" {
			t.Errorf("%s: %s = %q, want 2", format, api.HeaderTruncated, v)
		}
		raw := decode[struct{ Data []map[string]any }](t, w)
		if len(raw.Data) != 3 {
			t.Fatalf("%s: %d data items", format, len(raw.Data))
		}
		for i, d := range raw.Data {
			got, has := d["truncated"]
			if cut[i] && got != true || !cut[i] && has {
				t.Errorf("%s: data[%d] truncated = %v (present %v), want %v", format, i, got, has, cut[i])
			}
		}
	}
	cut = []bool{false}
	w := h.doJSON(t, "POST", "/v1/embeddings", `{"model":"minilm@v1","input":"short"}`)
	wantStatus(t, w, http.StatusOK)
	if v, ok := w.Header()[api.HeaderTruncated]; ok {
		t.Errorf("nothing cut, yet %s: %q", api.HeaderTruncated, v)
	}
	if d := decode[struct{ Data []map[string]any }](t, w).Data; len(d) != 1 || d[0]["truncated"] != nil {
		t.Errorf("nothing cut, yet data = %v", d)
	}
}

func TestEmbeddingsDimensionsMismatch(t *testing.T) {
	h := newHarness(t)
	recordEmbed(h)
	e := wantError(t, h.doJSON(t, "POST", "/v1/embeddings", `{"model":"minilm@v1","input":"a","dimensions":384}`), api.CodeQueryInvalid)
	if !strings.Contains(e.Message, "384") || !strings.Contains(e.Message, "minilm@v1 makes 3") {
		t.Errorf("message %q", e.Message)
	}
}

func TestEmbeddingsInvalid(t *testing.T) {
	texts := func(n int) string {
		b, _ := json.Marshal(strings.Split(strings.Repeat("x,", n-1)+"x", ","))
		return string(b)
	}
	for _, c := range []struct{ name, body, code string }{
		{"no input", `{"model":"m@v1"}`, api.CodeQueryInvalid},
		{"empty list", `{"model":"m@v1","input":[]}`, api.CodeQueryInvalid},
		{"empty text", `{"model":"m@v1","input":["a"," "]}`, api.CodeQueryInvalid},
		{"token arrays", `{"model":"m@v1","input":[[1,2,3]]}`, api.CodeQueryInvalid},
		{"too many", `{"model":"m@v1","input":` + texts(api.MaxEmbedTexts+1) + `}`, api.CodeQueryInvalid},
		{"format", `{"model":"m@v1","input":"a","encoding_format":"hex"}`, api.CodeQueryInvalid},
		{"text too large", `{"model":"m@v1","input":"` + strings.Repeat("x", collections.MaxTextBytes+1) + `"}`, api.CodeDocumentTooLarge},
		{"unknown field", `{"model":"m@v1","input":"a","temperature":1}`, api.CodeBodyMalformed},
		{"malformed", `{"model":`, api.CodeBodyMalformed},
		{"wrong type", `{"model":1,"input":"a"}`, api.CodeBodyMalformed},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			wantError(t, h.doJSON(t, "POST", "/v1/embeddings", c.body), c.code)
			wantCalls(t, h.ret.calls, map[string]int{"EmbedTexts": 0})
		})
	}
	// The most texts there may be.
	h := newHarness(t)
	wantStatus(t, h.doJSON(t, "POST", "/v1/embeddings", `{"model":"m@v1","input":`+texts(api.MaxEmbedTexts)+`}`), http.StatusOK)
}

func TestEmbeddingsErrors(t *testing.T) {
	h := newHarness(t)
	h.models.ServingVersionFn = func(ctx context.Context, m string) (string, error) {
		return "", fmt.Errorf("%w: %s", models.ErrUnknownModel, m)
	}
	wantError(t, h.doJSON(t, "POST", "/v1/embeddings", `{"model":"nope","input":"a"}`), api.CodeModelUnknown)
	wantCalls(t, h.ret.calls, map[string]int{"EmbedTexts": 0})

	for _, c := range []struct {
		err  error
		code string
	}{
		{fmt.Errorf("m@v1: %w", rag.ErrNoTokenizer), api.CodeEmbedderNoTok},
		{fmt.Errorf("%w: %w", rag.ErrEmbedder, rag.ErrNotEmbedder), api.CodeEmbedderInvalid},
		{fmt.Errorf("m@v1: %w", lifecycle.ErrNotLoaded), api.CodeModelNotLoaded},
		{fmt.Errorf("m@v9: %w", models.ErrUnknownVersion), api.CodeVersionUnknown},
	} {
		h.ret.EmbedTextsFn = func(ctx context.Context, ref string, texts []string) (rag.Embedding, error) {
			return rag.Embedding{}, c.err
		}
		wantError(t, h.doJSON(t, "POST", "/v1/embeddings", `{"model":"m@v1","input":"a"}`), c.code)
	}
}

func TestCreateCollection(t *testing.T) {
	h := newHarness(t)
	wr := testWrite("create")
	var got collections.Spec
	h.ret.CreateCollectionFn = func(ctx context.Context, s collections.Spec) (collections.Spec, crdt.Write, error) {
		got = s
		s.HLC = wr.HLC
		return s, wr, nil
	}
	w := h.doJSON(t, "POST", "/v1/collections", api.CreateCollectionRequest{Name: "manuals", Embedder: "minilm@v1", Dimension: 384, Metric: "dot", Vectors: "int8"})
	wantStatus(t, w, http.StatusCreated)
	want := collections.Spec{Name: "manuals", Embedder: "minilm@v1", Dimension: 384, Metric: "dot", Vectors: "int8"}
	if got != want {
		t.Errorf("CreateCollection(%+v), want %+v", got, want)
	}
	wantToken(t, w, wr)
	if b := decode[struct{ Collection collections.Spec }](t, w); b.Collection.Name != "manuals" || b.Collection.Dimension != 384 || b.Collection.HLC != wr.HLC {
		t.Errorf("answer = %+v", b)
	}
	wantCalls(t, h.ret.calls, map[string]int{"EmbedTexts": 0})
	wantCalls(t, h.cons.calls, map[string]int{"Position": 0})
}

func TestCreateCollectionLearnsDimension(t *testing.T) {
	h := newHarness(t)
	ref, texts := recordEmbed(h)
	var got collections.Spec
	h.ret.CreateCollectionFn = func(ctx context.Context, s collections.Spec) (collections.Spec, crdt.Write, error) {
		got = s
		return s, testWrite("c"), nil
	}
	w := h.doJSON(t, "POST", "/v1/collections", `{"name":"manuals","embedder":"minilm@v1"}`)
	wantStatus(t, w, http.StatusCreated)
	wantCalls(t, h.ret.calls, map[string]int{"EmbedTexts": 1})
	if *ref != "minilm@v1" || len(*texts) != 1 || got.Dimension != len(testVecs[0]) {
		t.Errorf("Embed(%q, %q); created %+v with dimension %d, want %d", *ref, *texts, got, got.Dimension, len(testVecs[0]))
	}

	h.ret.EmbedTextsFn = func(ctx context.Context, ref string, texts []string) (rag.Embedding, error) {
		return rag.Embedding{}, fmt.Errorf("%s: %w", ref, rag.ErrNoTokenizer)
	}
	wantError(t, h.doJSON(t, "POST", "/v1/collections", `{"name":"manuals","embedder":"minilm@v1"}`), api.CodeEmbedderNoTok)
	wantCalls(t, h.ret.calls, map[string]int{"CreateCollection": 1})
}

func TestCreateCollectionExisting(t *testing.T) {
	h := newHarness(t)
	pos := testWrite("position-now")
	h.cons.PositionFn = func(ctx context.Context) crdt.Write { return pos }
	h.ret.CreateCollectionFn = func(ctx context.Context, s collections.Spec) (collections.Spec, crdt.Write, error) {
		return s, crdt.Write{}, nil // existed with this spec: nothing written
	}
	w := h.doJSON(t, "POST", "/v1/collections", `{"name":"manuals","embedder":"minilm@v1","dimension":3}`)
	wantStatus(t, w, http.StatusCreated)
	wantToken(t, w, pos)
	wantCalls(t, h.cons.calls, map[string]int{"Position": 1})
}

func TestCreateCollectionErrors(t *testing.T) {
	for _, c := range []struct {
		name, body string
		err        error
		code       string
		creates    int
	}{
		{"bad name", `{"name":"-x","embedder":"m@v1","dimension":3}`, nil, api.CodeNameInvalid, 0},
		{"slash", `{"name":"a/b","embedder":"m@v1","dimension":3}`, nil, api.CodeNameInvalid, 0},
		{"malformed", `{"name":`, nil, api.CodeBodyMalformed, 0},
		{"unknown field", `{"name":"c","embedder":"m@v1","dim":3}`, nil, api.CodeBodyMalformed, 0},
		{"exists", `{"name":"c","embedder":"m@v1","dimension":3}`, fmt.Errorf("c: %w", collections.ErrExists), api.CodeCollectionExists, 1},
		{"bad spec", `{"name":"c","embedder":"m@v1","dimension":-1}`, fmt.Errorf("%w: dimension -1", collections.ErrBadSpec), api.CodeCollectionInvalid, 1},
		{"bad metric", `{"name":"c","embedder":"m@v1","dimension":3,"metric":"l7"}`, collections.ErrBadMetric, api.CodeCollectionInvalid, 1},
		{"bad embedder", `{"name":"c","embedder":"m","dimension":3}`, collections.ErrBadEmbedder, api.CodeCollectionInvalid, 1},
		{"disk", `{"name":"c","embedder":"m@v1","dimension":3}`, fmt.Errorf("put: %w", crdt.ErrRecordTooLarge), api.CodeRecordInvalid, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			h.ret.CreateCollectionFn = func(ctx context.Context, s collections.Spec) (collections.Spec, crdt.Write, error) {
				return collections.Spec{}, crdt.Write{}, c.err
			}
			wantError(t, h.doJSON(t, "POST", "/v1/collections", c.body), c.code)
			wantCalls(t, h.ret.calls, map[string]int{"CreateCollection": c.creates})
		})
	}
}

func TestCollections(t *testing.T) {
	h := newHarness(t)
	list := []api.CollectionInfo{{Spec: collections.Spec{Name: "manuals", Embedder: "m@v1", Dimension: 3, Metric: "cosine"},
		Freshness: api.Freshness{Documents: 12}}}
	h.ret.CollectionsFn = func() []api.CollectionInfo { return list }
	w := h.do(t, "GET", "/v1/collections", nil)
	wantStatus(t, w, http.StatusOK)
	if b := decode[struct{ Collections []api.CollectionInfo }](t, w); len(b.Collections) != 1 ||
		b.Collections[0].Name != "manuals" || b.Collections[0].Freshness.Documents != 12 {
		t.Errorf("answer = %+v", b)
	}
	wantCalls(t, h.ret.calls, map[string]int{"CaughtUp": 1})

	h.ret.CaughtUpFn = func(ctx context.Context) error { return context.DeadlineExceeded }
	wantError(t, h.do(t, "GET", "/v1/collections", nil), api.CodeIndexBehind)
	wantCalls(t, h.ret.calls, map[string]int{"Collections": 1})
}

func TestCollection(t *testing.T) {
	h := newHarness(t)
	h.ret.CollectionFn = func(c string) (api.CollectionInfo, bool) {
		if c != "manuals" {
			return api.CollectionInfo{}, false
		}
		return api.CollectionInfo{Spec: collections.Spec{Name: c, Dimension: 3}, Freshness: api.Freshness{Documents: 5}}, true
	}
	w := h.do(t, "GET", "/v1/collections/manuals", nil)
	wantStatus(t, w, http.StatusOK)
	if ci := decode[api.CollectionInfo](t, w); ci.Name != "manuals" || ci.Dimension != 3 || ci.Freshness.Documents != 5 {
		t.Errorf("answer = %+v", ci)
	}
	e := wantError(t, h.do(t, "GET", "/v1/collections/nope", nil), api.CodeCollectionUnknown)
	if !strings.Contains(e.Message, "nope") {
		t.Errorf("message %q does not name the collection", e.Message)
	}

	h.ret.CaughtUpFn = func(ctx context.Context) error { return fmt.Errorf("applying: %w", context.DeadlineExceeded) }
	wantError(t, h.do(t, "GET", "/v1/collections/manuals", nil), api.CodeIndexBehind)
}

// recordDocs makes PrepareDocs and PutDocs remember what they got.
func recordDocs(h *harness, wr crdt.Write) (*[]api.DocRequest, *[]collections.Doc) {
	var reqs []api.DocRequest
	var put []collections.Doc
	h.ret.PrepareDocsFn = func(ctx context.Context, c string, rs []api.DocRequest) ([]collections.Doc, []string, error) {
		reqs = rs
		docs := make([]collections.Doc, len(rs))
		for i, r := range rs {
			id := r.ID
			if id == "" {
				id = fmt.Sprintf("gen-%d", i)
			}
			docs[i] = collections.Doc{ID: id, Text: r.Text, Metadata: r.Metadata, Embedder: c + "-emb@v1"}
		}
		return docs, nil, nil
	}
	h.ret.PutDocsFn = func(ctx context.Context, c string, docs []collections.Doc) (crdt.Write, error) {
		put = docs
		return wr, nil
	}
	return &reqs, &put
}

func TestPutDoc(t *testing.T) {
	h := newHarness(t)
	wr := testWrite("doc")
	reqs, put := recordDocs(h, wr)
	for _, body := range []string{
		`{"text":"gearbox noise","metadata":{"site":"a"}}`,
		`{"id":"d1","text":"gearbox noise","metadata":{"site":"a"}}`, // the same id is fine
	} {
		w := h.doJSON(t, "PUT", "/v1/collections/manuals/docs/d1", body)
		wantStatus(t, w, http.StatusOK)
		want := []api.DocRequest{{ID: "d1", Text: "gearbox noise", Metadata: map[string]string{"site": "a"}}}
		if !reflect.DeepEqual(*reqs, want) || len(*put) != 1 || (*put)[0].ID != "d1" {
			t.Errorf("PrepareDocs got %+v, PutDocs %+v", *reqs, *put)
		}
		wantToken(t, w, wr)
		if res := decode[api.DocsResult](t, w); res.Collection != "manuals" || !reflect.DeepEqual(res.IDs, []string{"d1"}) || res.Embedder != "manuals-emb@v1" {
			t.Errorf("answer = %+v", res)
		}
	}

	// With a vector.
	h.doJSON(t, "PUT", "/v1/collections/manuals/docs/d2", `{"text":"t","vector":[1,2,3]}`)
	if r := (*reqs)[0]; r.ID != "d2" || !reflect.DeepEqual(r.Vector, []float32{1, 2, 3}) {
		t.Errorf("PrepareDocs got %+v", r)
	}
}

func TestPutDocIDMismatch(t *testing.T) {
	h := newHarness(t)
	e := wantError(t, h.doJSON(t, "PUT", "/v1/collections/manuals/docs/d1", `{"id":"d2","text":"x"}`), api.CodeDocumentInvalid)
	if !strings.Contains(e.Message, "id") {
		t.Errorf("message %q", e.Message)
	}
	wantError(t, h.doJSON(t, "PUT", "/v1/collections/manuals/docs/d1", `{"text":"x","score":1}`), api.CodeBodyMalformed)
	wantCalls(t, h.ret.calls, map[string]int{"PrepareDocs": 0, "PutDocs": 0})
}

func TestPutDocs(t *testing.T) {
	h := newHarness(t)
	wr := testWrite("docs")
	reqs, put := recordDocs(h, wr)
	w := h.doJSON(t, "POST", "/v1/collections/manuals/docs", api.DocsRequest{Docs: []api.DocRequest{{ID: "a", Text: "one"}, {Text: "two"}}})
	wantStatus(t, w, http.StatusOK)
	if len(*reqs) != 2 || (*reqs)[0].ID != "a" || (*reqs)[1].Text != "two" || len(*put) != 2 {
		t.Errorf("PrepareDocs got %+v, PutDocs %+v", *reqs, *put)
	}
	wantToken(t, w, wr)
	if res := decode[api.DocsResult](t, w); !reflect.DeepEqual(res.IDs, []string{"a", "gen-1"}) || res.Collection != "manuals" {
		t.Errorf("answer = %+v", res)
	}

	// The most documents there may be.
	many := api.DocsRequest{Docs: make([]api.DocRequest, api.MaxBatchDocs)}
	for i := range many.Docs {
		many.Docs[i].Text = "x"
	}
	wantStatus(t, h.doJSON(t, "POST", "/v1/collections/manuals/docs", many), http.StatusOK)

	prepared := h.ret.calls["PrepareDocs"]
	wantError(t, h.doJSON(t, "POST", "/v1/collections/manuals/docs", `{"docs":[{"txt":"x"}]}`), api.CodeBodyMalformed)
	wantError(t, h.doJSON(t, "POST", "/v1/collections/manuals/docs", `[{"text":"x"}]`), api.CodeBodyMalformed)
	wantCalls(t, h.ret.calls, map[string]int{"PrepareDocs": prepared})
}

// TestPutDocsTruncated: the answer of a document write lists the ids
// PrepareDocs reports as cut before embedding, and has no "truncated"
// when none was.
func TestPutDocsTruncated(t *testing.T) {
	h := newHarness(t)
	var truncated []string
	h.ret.PrepareDocsFn = func(ctx context.Context, c string, rs []api.DocRequest) ([]collections.Doc, []string, error) {
		docs := make([]collections.Doc, len(rs))
		for i, r := range rs {
			docs[i] = collections.Doc{ID: r.ID, Text: r.Text, Embedder: "emb@v1"}
		}
		return docs, truncated, nil
	}
	truncated = []string{"b", "c"}
	w := h.doJSON(t, "POST", "/v1/collections/manuals/docs", `{"docs":[{"id":"a","text":"short"},{"id":"b","text":"long"},{"id":"c","text":"long too"}]}`)
	wantStatus(t, w, http.StatusOK)
	if res := decode[api.DocsResult](t, w); !reflect.DeepEqual(res.Truncated, []string{"b", "c"}) || len(res.IDs) != 3 {
		t.Errorf("answer = %+v, want truncated [b c]", res)
	}
	truncated = []string{"d1"}
	w = h.doJSON(t, "PUT", "/v1/collections/manuals/docs/d1", `{"text":"long"}`)
	wantStatus(t, w, http.StatusOK)
	if res := decode[api.DocsResult](t, w); !reflect.DeepEqual(res.Truncated, []string{"d1"}) {
		t.Errorf("single document: answer = %+v, want truncated [d1]", res)
	}
	truncated = nil
	w = h.doJSON(t, "PUT", "/v1/collections/manuals/docs/d1", `{"text":"short"}`)
	wantStatus(t, w, http.StatusOK)
	if raw := decode[map[string]any](t, w); raw["truncated"] != nil {
		t.Errorf("nothing cut, yet the answer says %v", raw)
	}
}

func TestPutDocsBatchSize(t *testing.T) {
	over := api.DocsRequest{Docs: make([]api.DocRequest, api.MaxBatchDocs+1)}
	for i := range over.Docs {
		over.Docs[i].Text = "x"
	}
	for name, body := range map[string]any{"empty": `{"docs":[]}`, "none": `{}`, "over": over} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t)
			e := wantError(t, h.doJSON(t, "POST", "/v1/collections/manuals/docs", body), api.CodeDocumentInvalid)
			if !strings.Contains(e.Message, fmt.Sprint(api.MaxBatchDocs)) {
				t.Errorf("message %q does not name the limit", e.Message)
			}
			wantCalls(t, h.ret.calls, map[string]int{"PrepareDocs": 0})
		})
	}
}

func TestPutDocsErrors(t *testing.T) {
	for _, c := range []struct {
		name       string
		prepareErr error
		putErr     error
		code       string
	}{
		{"dimension", fmt.Errorf("doc d1: %w: 2, want 3", collections.ErrDimension), nil, api.CodeDocumentInvalid},
		{"empty text", collections.ErrEmptyText, nil, api.CodeDocumentInvalid},
		{"non-finite", collections.ErrNonFinite, nil, api.CodeDocumentInvalid},
		{"zero vector", collections.ErrZeroVector, nil, api.CodeDocumentInvalid},
		{"bad id", fmt.Errorf("%w: document id", collections.ErrBadName), nil, api.CodeNameInvalid},
		{"too large", fmt.Errorf("doc d1: %w", collections.ErrTooLarge), nil, api.CodeDocumentTooLarge},
		{"unknown collection", fmt.Errorf("%w: manuals", collections.ErrUnknown), nil, api.CodeCollectionUnknown},
		{"embedder", fmt.Errorf("%w: no session", rag.ErrEmbedder), nil, api.CodeEmbedderInvalid},
		{"record too large", nil, fmt.Errorf("put: %w", crdt.ErrRecordTooLarge), api.CodeRecordInvalid},
		{"disk full", nil, fmt.Errorf("put: %w", store.ErrDiskFull), api.CodeDiskReserve},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			h.ret.PrepareDocsFn = func(ctx context.Context, coll string, rs []api.DocRequest) ([]collections.Doc, []string, error) {
				if c.prepareErr != nil {
					return nil, nil, c.prepareErr
				}
				return []collections.Doc{{ID: "d1"}}, nil, nil
			}
			h.ret.PutDocsFn = func(ctx context.Context, coll string, docs []collections.Doc) (crdt.Write, error) {
				return crdt.Write{}, c.putErr
			}
			wantError(t, h.doJSON(t, "PUT", "/v1/collections/manuals/docs/d1", `{"text":"x"}`), c.code)
			puts := 0
			if c.prepareErr == nil {
				puts = 1
			}
			wantCalls(t, h.ret.calls, map[string]int{"PrepareDocs": 1, "PutDocs": puts})
		})
	}
}

func TestGetDoc(t *testing.T) {
	h := newHarness(t)
	var asked [2]string
	h.ret.DocFn = func(ctx context.Context, c, id string) (collections.Doc, error) {
		asked = [2]string{c, id}
		if id == "nope" {
			return collections.Doc{}, fmt.Errorf("%s/%s: %w", c, id, collections.ErrUnknownDoc)
		}
		return collections.Doc{ID: id, Text: "gearbox noise", Metadata: map[string]string{"site": "a"}, Embedder: "m@v1"}, nil
	}
	w := h.do(t, "GET", "/v1/collections/manuals/docs/d1", nil)
	wantStatus(t, w, http.StatusOK)
	if d := decode[collections.Doc](t, w); asked != [2]string{"manuals", "d1"} || d.ID != "d1" || d.Text != "gearbox noise" || d.Metadata["site"] != "a" {
		t.Errorf("Doc%v answered %+v", asked, d)
	}
	wantError(t, h.do(t, "GET", "/v1/collections/manuals/docs/nope", nil), api.CodeDocumentUnknown)
}

func TestDeleteDoc(t *testing.T) {
	h := newHarness(t)
	wr := testWrite("del")
	var asked [2]string
	h.ret.DeleteDocFn = func(ctx context.Context, c, id string) (crdt.Write, error) {
		asked = [2]string{c, id}
		if c == "nope" {
			return crdt.Write{}, fmt.Errorf("%w: %s", collections.ErrUnknown, c)
		}
		return wr, nil
	}
	w := h.do(t, "DELETE", "/v1/collections/manuals/docs/d1", nil)
	wantStatus(t, w, http.StatusOK)
	wantToken(t, w, wr)
	if b := decode[map[string]any](t, w); asked != [2]string{"manuals", "d1"} || b["collection"] != "manuals" || b["deleted"] != "d1" {
		t.Errorf("DeleteDoc%v answered %v", asked, b)
	}
	wantError(t, h.do(t, "DELETE", "/v1/collections/nope/docs/d1", nil), api.CodeCollectionUnknown)
}

// queried records one Retrieval.Query call.
type queried struct {
	c      string
	q      []float32
	k      int
	filter map[string]string
}

func recordQuery(h *harness, results []api.Result, fresh api.Freshness) *queried {
	got := &queried{}
	h.ret.QueryFn = func(ctx context.Context, c string, q []float32, k int, filter map[string]string) ([]api.Result, api.Freshness, error) {
		*got = queried{c, q, k, filter}
		return results, fresh, nil
	}
	return got
}

func TestQueryText(t *testing.T) {
	h := newHarness(t)
	h.cons.Stale = 0.75
	ref, texts := recordEmbed(h)
	h.ret.SpecFn = func(ctx context.Context, c string) (collections.Spec, error) {
		return collections.Spec{Name: c, Embedder: "minilm@v2", Dimension: 3}, nil
	}
	results := []api.Result{{ID: "d1", Score: 0.9, Text: "gearbox noise", Metadata: map[string]string{"site": "a"}}}
	fresh := api.Freshness{Documents: 12, LastApplied: time.Unix(1700000000, 0).UTC()}
	got := recordQuery(h, results, fresh)
	w := h.doJSON(t, "POST", "/v1/collections/manuals/query", `{"text":"noisy gearbox","filter":{"site":"a"}}`)
	wantStatus(t, w, http.StatusOK)
	if *ref != "minilm@v2" || !reflect.DeepEqual(*texts, []string{"noisy gearbox"}) {
		t.Errorf("Embed(%q, %q), want the collection's embedder", *ref, *texts)
	}
	want := queried{"manuals", testVecs[0], 10, map[string]string{"site": "a"}}
	if !reflect.DeepEqual(*got, want) {
		t.Errorf("Query%+v, want %+v", *got, want)
	}
	resp := decode[api.QueryResponse](t, w)
	wantResp := api.QueryResponse{Collection: "manuals", Results: results, Index: fresh, StalenessSeconds: 0.75, Embedder: "minilm@v2"}
	if !reflect.DeepEqual(resp, wantResp) {
		t.Errorf("answer\n%+v\nwant\n%+v", resp, wantResp)
	}
	wantCalls(t, h.ret.calls, map[string]int{"Spec": 1, "CaughtUp": 1, "ObserveQuery": 1})
	if s := w.Header().Get(api.HeaderStaleness); s != "0.750s" {
		t.Errorf("%s = %q", api.HeaderStaleness, s)
	}
}

// TestQueryTextTruncated: a query text cut before embedding is answered
// with "query_truncated": true; an uncut one has no such field.
func TestQueryTextTruncated(t *testing.T) {
	h := newHarness(t)
	cut := true
	h.ret.EmbedTextsFn = func(ctx context.Context, r string, tx []string) (rag.Embedding, error) {
		return rag.Embedding{Vectors: [][]float32{{1, 0}}, Truncated: []bool{cut}, Tokens: 256, Embedder: r}, nil
	}
	w := h.doJSON(t, "POST", "/v1/collections/manuals/query", `{"text":"a very long question"}`)
	wantStatus(t, w, http.StatusOK)
	if resp := decode[api.QueryResponse](t, w); !resp.QueryTruncated || resp.Embedder != "emb@v1" {
		t.Errorf("answer = %+v, want query_truncated", resp)
	}
	cut = false
	w = h.doJSON(t, "POST", "/v1/collections/manuals/query", `{"text":"short"}`)
	wantStatus(t, w, http.StatusOK)
	if raw := decode[map[string]any](t, w); raw["query_truncated"] != nil {
		t.Errorf("nothing cut, yet the answer says %v", raw)
	}
}

func TestQueryVector(t *testing.T) {
	h := newHarness(t)
	got := recordQuery(h, nil, api.Freshness{Documents: 0})
	w := h.doJSON(t, "POST", "/v1/collections/manuals/query", `{"vector":[0.5,0.25],"k":3}`)
	wantStatus(t, w, http.StatusOK)
	if want := (queried{"manuals", []float32{0.5, 0.25}, 3, nil}); !reflect.DeepEqual(*got, want) {
		t.Errorf("Query%+v, want %+v", *got, want)
	}
	wantCalls(t, h.ret.calls, map[string]int{"EmbedTexts": 0})
	raw := decode[map[string]any](t, w)
	if r, ok := raw["results"].([]any); !ok || len(r) != 0 {
		t.Errorf(`no results must be "results": [], got %v`, raw["results"])
	}
	if _, ok := raw["embedder"]; ok {
		t.Errorf("a vector query names an embedder: %v", raw)
	}
}

func TestQueryInvalid(t *testing.T) {
	for _, c := range []struct{ name, body, code string }{
		{"k zero", `{"text":"x","k":0}`, api.CodeQueryInvalid},
		{"k over", fmt.Sprintf(`{"text":"x","k":%d}`, api.MaxQueryK+1), api.CodeQueryInvalid},
		{"both", `{"text":"x","vector":[1]}`, api.CodeQueryInvalid},
		{"neither", `{"k":3}`, api.CodeQueryInvalid},
		{"text too large", `{"text":"` + strings.Repeat("x", collections.MaxTextBytes+1) + `"}`, api.CodeDocumentTooLarge},
		{"unknown field", `{"text":"x","top_k":3}`, api.CodeBodyMalformed},
		{"malformed", `{"text":`, api.CodeBodyMalformed},
		{"non-finite", `{"vector":[1e999]}`, api.CodeBodyMalformed},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			wantError(t, h.doJSON(t, "POST", "/v1/collections/manuals/query", c.body), c.code)
			wantCalls(t, h.ret.calls, map[string]int{"Spec": 0, "Query": 0, "ObserveQuery": 0})
		})
	}
}

func TestQueryIndexBehind(t *testing.T) {
	h := newHarness(t)
	h.ret.CaughtUpFn = func(ctx context.Context) error { return context.DeadlineExceeded }
	wantError(t, h.doJSON(t, "POST", "/v1/collections/manuals/query", `{"text":"x"}`), api.CodeIndexBehind)
	wantCalls(t, h.ret.calls, map[string]int{"EmbedTexts": 0, "Query": 0})
}

func TestQueryErrors(t *testing.T) {
	h := newHarness(t)
	h.ret.SpecFn = func(ctx context.Context, c string) (collections.Spec, error) {
		return collections.Spec{}, fmt.Errorf("%w: %s", collections.ErrUnknown, c)
	}
	wantError(t, h.doJSON(t, "POST", "/v1/collections/nope/query", `{"text":"x"}`), api.CodeCollectionUnknown)
	wantCalls(t, h.ret.calls, map[string]int{"CaughtUp": 0, "Query": 0})

	h = newHarness(t)
	h.ret.QueryFn = func(ctx context.Context, c string, q []float32, k int, filter map[string]string) ([]api.Result, api.Freshness, error) {
		return nil, api.Freshness{}, fmt.Errorf("%w: 2, want 3", collections.ErrDimension)
	}
	wantError(t, h.doJSON(t, "POST", "/v1/collections/manuals/query", `{"vector":[1,2]}`), api.CodeDocumentInvalid)
	wantCalls(t, h.ret.calls, map[string]int{"ObserveQuery": 0})

	h = newHarness(t) // a collection whose index is still being loaded at start
	h.ret.QueryFn = func(ctx context.Context, c string, q []float32, k int, filter map[string]string) ([]api.Result, api.Freshness, error) {
		return nil, api.Freshness{}, fmt.Errorf("%w: %s", rag.ErrLoading, c)
	}
	wantError(t, h.doJSON(t, "POST", "/v1/collections/manuals/query", `{"vector":[1,2,3]}`), api.CodeIndexLoading)

	h = newHarness(t)
	h.ret.EmbedTextsFn = func(ctx context.Context, ref string, texts []string) (rag.Embedding, error) {
		return rag.Embedding{}, fmt.Errorf("%s: %w", ref, lifecycle.ErrNotLoaded)
	}
	wantError(t, h.doJSON(t, "POST", "/v1/collections/manuals/query", `{"text":"x"}`), api.CodeModelNotLoaded)
	wantCalls(t, h.ret.calls, map[string]int{"Query": 0})
}
