package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	cid "github.com/ipfs/go-cid"
	"github.com/multiformats/go-multihash"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/crdt"
	"github.com/shoal-mesh/shoal/crdt/collections"
	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/inference"
	"github.com/shoal-mesh/shoal/lifecycle"
	"github.com/shoal-mesh/shoal/rag"
	"github.com/shoal-mesh/shoal/serving"
)

// Fakes of the deps.go interfaces: one per interface, each method a
// function field (nil: a harmless default), every call counted by name.

// calls counts the calls a fake received, by method name.
type calls map[string]int

func (c calls) add(name string) { c[name]++ }

type fakePeer struct {
	calls
	StatusFn func(ctx context.Context) (api.Status, error)
}

func (f *fakePeer) ID() string { f.add("ID"); return "peer-test" }

func (f *fakePeer) Status(ctx context.Context) (api.Status, error) {
	f.add("Status")
	if f.StatusFn == nil {
		return api.Status{PeerID: "peer-test"}, nil
	}
	return f.StatusFn(ctx)
}

type fakeConsistency struct {
	calls
	Stale      float64 // Staleness().Seconds
	WaitForFn  func(ctx context.Context, heads []cid.Cid) error
	PositionFn func(ctx context.Context) crdt.Write
}

func (f *fakeConsistency) Staleness() crdt.Staleness {
	f.add("Staleness")
	return crdt.Staleness{Seconds: f.Stale}
}

func (f *fakeConsistency) WaitFor(ctx context.Context, heads []cid.Cid) error {
	f.add("WaitFor")
	if f.WaitForFn == nil {
		return nil
	}
	return f.WaitForFn(ctx, heads)
}

func (f *fakeConsistency) Position(ctx context.Context) crdt.Write {
	f.add("Position")
	if f.PositionFn == nil {
		return testWrite("position")
	}
	return f.PositionFn(ctx)
}

type fakeModels struct {
	calls
	ListFn           func(ctx context.Context) (api.ModelList, error)
	ModelFn          func(ctx context.Context, name string) (api.ModelInfo, error)
	PushFn           func(ctx context.Context, r io.Reader, m models.Manifest) (models.Manifest, crdt.Write, error)
	ActivateFn       func(ctx context.Context, model, version string) (models.Activation, crdt.Write, error)
	RollbackFn       func(ctx context.Context, model string) (models.Activation, crdt.Write, error)
	StartPullFn      func(ctx context.Context, model, version string) (api.PullResult, bool, error)
	ArtifactFn       func(ctx context.Context, model, version string) (models.Manifest, io.ReadCloser, error)
	ServingVersionFn func(ctx context.Context, model string) (string, error)
	WatchFn          func() (<-chan struct{}, func())
	ReadyFn          func(ctx context.Context) (bool, string)
	ModelReadyFn     func(ctx context.Context, model, version string) (lifecycle.ModelReadiness, error)
	MetadataFn       func(ctx context.Context, model, version string) (inference.ModelMetadata, string, error)
}

func (f *fakeModels) List(ctx context.Context) (api.ModelList, error) {
	f.add("List")
	if f.ListFn == nil {
		return api.ModelList{}, nil
	}
	return f.ListFn(ctx)
}

func (f *fakeModels) Model(ctx context.Context, name string) (api.ModelInfo, error) {
	f.add("Model")
	if f.ModelFn == nil {
		return api.ModelInfo{Name: name}, nil
	}
	return f.ModelFn(ctx, name)
}

// CurrentServing reads Model, as the manager's reads its state.
func (f *fakeModels) CurrentServing(ctx context.Context, name string) (*models.Activation, string, error) {
	mi, err := f.Model(ctx, name)
	if err != nil {
		return nil, "", err
	}
	serving := ""
	if mi.Serving != nil {
		serving = mi.Serving.Version
	}
	return mi.Current, serving, nil
}

func (f *fakeModels) Push(ctx context.Context, r io.Reader, m models.Manifest) (models.Manifest, crdt.Write, error) {
	f.add("Push")
	if f.PushFn == nil {
		return m, testWrite("push"), nil
	}
	return f.PushFn(ctx, r, m)
}

func (f *fakeModels) Activate(ctx context.Context, model, version string) (models.Activation, crdt.Write, error) {
	f.add("Activate")
	if f.ActivateFn == nil {
		return models.Activation{Model: model, Version: version}, testWrite("activate"), nil
	}
	return f.ActivateFn(ctx, model, version)
}

func (f *fakeModels) Rollback(ctx context.Context, model string) (models.Activation, crdt.Write, error) {
	f.add("Rollback")
	if f.RollbackFn == nil {
		return models.Activation{Model: model}, testWrite("rollback"), nil
	}
	return f.RollbackFn(ctx, model)
}

func (f *fakeModels) StartPull(ctx context.Context, model, version string) (api.PullResult, bool, error) {
	f.add("StartPull")
	if f.StartPullFn == nil {
		return api.PullResult{Ref: model + "@" + version}, false, nil
	}
	return f.StartPullFn(ctx, model, version)
}

func (f *fakeModels) Artifact(ctx context.Context, model, version string) (models.Manifest, io.ReadCloser, error) {
	f.add("Artifact")
	if f.ArtifactFn == nil {
		return models.Manifest{}, nil, models.ErrUnknownModel
	}
	return f.ArtifactFn(ctx, model, version)
}

func (f *fakeModels) ServingVersion(ctx context.Context, model string) (string, error) {
	f.add("ServingVersion")
	if f.ServingVersionFn == nil {
		return "v1", nil
	}
	return f.ServingVersionFn(ctx, model)
}

// Watch, by default, never signals.
func (f *fakeModels) Watch() (<-chan struct{}, func()) {
	f.add("Watch")
	if f.WatchFn == nil {
		return nil, func() {}
	}
	return f.WatchFn()
}

func (f *fakeModels) Ready(ctx context.Context) (bool, string) {
	f.add("Ready")
	if f.ReadyFn == nil {
		return true, ""
	}
	return f.ReadyFn(ctx)
}

func (f *fakeModels) ModelReady(ctx context.Context, model, version string) (lifecycle.ModelReadiness, error) {
	f.add("ModelReady")
	if f.ModelReadyFn == nil {
		return lifecycle.ModelReadiness{Ready: true, Version: "v1"}, nil
	}
	return f.ModelReadyFn(ctx, model, version)
}

func (f *fakeModels) Metadata(ctx context.Context, model, version string) (inference.ModelMetadata, string, error) {
	f.add("Metadata")
	if f.MetadataFn == nil {
		return inference.ModelMetadata{Name: model}, "v1", nil
	}
	return f.MetadataFn(ctx, model, version)
}

// recorded is one Inference.Record call.
type recorded struct{ model, version, outcome string }

type fakeInference struct {
	calls
	InferFn  func(ctx context.Context, c serving.Call) (serving.Answer, error)
	Recorded []recorded
}

func (f *fakeInference) Infer(ctx context.Context, c serving.Call) (serving.Answer, error) {
	f.add("Infer")
	if f.InferFn == nil {
		return serving.Answer{Status: http.StatusOK, HeaderLen: -1, Body: []byte("{}")}, nil
	}
	return f.InferFn(ctx, c)
}

func (f *fakeInference) Record(model, version, outcome string) {
	f.add("Record")
	f.Recorded = append(f.Recorded, recorded{model, version, outcome})
}

type fakeFlusher struct {
	calls
	FlushFn func(ctx context.Context, model string) (api.CacheFlush, crdt.Write, error)
}

func (f *fakeFlusher) Flush(ctx context.Context, model string) (api.CacheFlush, crdt.Write, error) {
	f.add("Flush")
	if f.FlushFn == nil {
		return api.CacheFlush{Scope: api.CacheFlushAll}, testWrite("flush"), nil
	}
	return f.FlushFn(ctx, model)
}

type fakeRetrieval struct {
	calls
	EmbedTextsFn       func(ctx context.Context, ref string, texts []string) (rag.Embedding, error)
	PrepareDocsFn      func(ctx context.Context, c string, reqs []api.DocRequest) ([]collections.Doc, []string, error)
	SpecFn             func(ctx context.Context, c string) (collections.Spec, error)
	CreateCollectionFn func(ctx context.Context, spec collections.Spec) (collections.Spec, crdt.Write, error)
	PutDocsFn          func(ctx context.Context, c string, docs []collections.Doc) (crdt.Write, error)
	DocFn              func(ctx context.Context, c, id string) (collections.Doc, error)
	DeleteDocFn        func(ctx context.Context, c, id string) (crdt.Write, error)
	CollectionsFn      func() []api.CollectionInfo
	CollectionFn       func(c string) (api.CollectionInfo, bool)
	CaughtUpFn         func(ctx context.Context) error
	QueryFn            func(ctx context.Context, c string, q []float32, k int, filter map[string]string) ([]api.Result, api.Freshness, error)
	Observed           []time.Duration
}

func (f *fakeRetrieval) EmbedTexts(ctx context.Context, ref string, texts []string) (rag.Embedding, error) {
	f.add("EmbedTexts")
	if f.EmbedTextsFn == nil {
		em := rag.Embedding{Vectors: make([][]float32, len(texts)), Truncated: make([]bool, len(texts)), Tokens: len(texts), Embedder: ref}
		for i := range em.Vectors {
			em.Vectors[i] = []float32{1, 0}
		}
		return em, nil
	}
	return f.EmbedTextsFn(ctx, ref, texts)
}

func (f *fakeRetrieval) PrepareDocs(ctx context.Context, c string, reqs []api.DocRequest) ([]collections.Doc, []string, error) {
	f.add("PrepareDocs")
	if f.PrepareDocsFn == nil {
		docs := make([]collections.Doc, len(reqs))
		for i, r := range reqs {
			docs[i] = collections.Doc{ID: r.ID, Text: r.Text, Metadata: r.Metadata, Embedder: "emb@v1"}
		}
		return docs, nil, nil
	}
	return f.PrepareDocsFn(ctx, c, reqs)
}

func (f *fakeRetrieval) Spec(ctx context.Context, c string) (collections.Spec, error) {
	f.add("Spec")
	if f.SpecFn == nil {
		return collections.Spec{Name: c, Embedder: "emb@v1", Dimension: 2, Metric: "cosine"}, nil
	}
	return f.SpecFn(ctx, c)
}

func (f *fakeRetrieval) CreateCollection(ctx context.Context, spec collections.Spec) (collections.Spec, crdt.Write, error) {
	f.add("CreateCollection")
	if f.CreateCollectionFn == nil {
		return spec, testWrite("create"), nil
	}
	return f.CreateCollectionFn(ctx, spec)
}

func (f *fakeRetrieval) PutDocs(ctx context.Context, c string, docs []collections.Doc) (crdt.Write, error) {
	f.add("PutDocs")
	if f.PutDocsFn == nil {
		return testWrite("put"), nil
	}
	return f.PutDocsFn(ctx, c, docs)
}

func (f *fakeRetrieval) Doc(ctx context.Context, c, id string) (collections.Doc, error) {
	f.add("Doc")
	if f.DocFn == nil {
		return collections.Doc{ID: id}, nil
	}
	return f.DocFn(ctx, c, id)
}

func (f *fakeRetrieval) DeleteDoc(ctx context.Context, c, id string) (crdt.Write, error) {
	f.add("DeleteDoc")
	if f.DeleteDocFn == nil {
		return testWrite("delete"), nil
	}
	return f.DeleteDocFn(ctx, c, id)
}

func (f *fakeRetrieval) Collections() []api.CollectionInfo {
	f.add("Collections")
	if f.CollectionsFn == nil {
		return []api.CollectionInfo{}
	}
	return f.CollectionsFn()
}

func (f *fakeRetrieval) Collection(c string) (api.CollectionInfo, bool) {
	f.add("Collection")
	if f.CollectionFn == nil {
		return api.CollectionInfo{}, false
	}
	return f.CollectionFn(c)
}

func (f *fakeRetrieval) CaughtUp(ctx context.Context) error {
	f.add("CaughtUp")
	if f.CaughtUpFn == nil {
		return nil
	}
	return f.CaughtUpFn(ctx)
}

func (f *fakeRetrieval) Query(ctx context.Context, c string, q []float32, k int, filter map[string]string) ([]api.Result, api.Freshness, error) {
	f.add("Query")
	if f.QueryFn == nil {
		return nil, api.Freshness{}, nil
	}
	return f.QueryFn(ctx, c, q, k, filter)
}

func (f *fakeRetrieval) ObserveQuery(d time.Duration) {
	f.add("ObserveQuery")
	f.Observed = append(f.Observed, d)
}

type fakeDisk struct {
	calls
	CheckSpaceFn func(n int64) error
	Asked        []int64
}

func (f *fakeDisk) CheckSpace(n int64) error {
	f.add("CheckSpace")
	f.Asked = append(f.Asked, n)
	if f.CheckSpaceFn == nil {
		return nil
	}
	return f.CheckSpaceFn(n)
}

// testWrite is a write whose token names one head, made from seed.
func testWrite(seed string) crdt.Write {
	return crdt.Write{HLC: crdt.HLC{Wall: 1700000000000000000, Logical: 1, Peer: "peer-" + seed},
		Peer: "peer-" + seed, Heads: []cid.Cid{testCID(seed)}}
}

func testCID(seed string) cid.Cid {
	mh, err := multihash.Sum([]byte(seed), multihash.SHA2_256, -1)
	if err != nil {
		panic(err)
	}
	return cid.NewCidV1(cid.Raw, mh)
}

// harness is an API over fresh fakes of every dependency.
type harness struct {
	api     *API
	peer    *fakePeer
	cons    *fakeConsistency
	models  *fakeModels
	inf     *fakeInference
	flusher *fakeFlusher
	ret     *fakeRetrieval
	disk    *fakeDisk
	token   string // the API token writes need ("" none)
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{peer: &fakePeer{calls: calls{}}, cons: &fakeConsistency{calls: calls{}},
		models: &fakeModels{calls: calls{}}, inf: &fakeInference{calls: calls{}}, flusher: &fakeFlusher{calls: calls{}},
		ret: &fakeRetrieval{calls: calls{}}, disk: &fakeDisk{calls: calls{}}}
	h.api = New(Config{Peer: h.peer, Consistency: h.cons, Models: h.models, Inference: h.inf, Flusher: h.flusher,
		Retrieval: h.ret, Disk: h.disk, Token: func() string { return h.token }, Version: "1.2.3-test",
		Metrics: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "# fake metrics\nshoal_up 1\n")
		}),
		Logger: slog.New(slog.DiscardHandler)})
	return h
}

// do serves one request; hdr is header name, value pairs.
func (h *harness) do(t *testing.T, method, path string, body io.Reader, hdr ...string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, path, body)
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.api.Handler().ServeHTTP(w, r)
	return w
}

// doJSON serves one request with a JSON (or raw string) body.
func (h *harness) doJSON(t *testing.T, method, path string, body any, hdr ...string) *httptest.ResponseRecorder {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	return h.do(t, method, path, rd, hdr...)
}

// decode unmarshals a response body into a T.
func decode[T any](t *testing.T, w *httptest.ResponseRecorder) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(w.Body.Bytes(), &v); err != nil {
		t.Fatalf("answer is not JSON (%v): %s", err, w.Body)
	}
	return v
}

// wantStatus fails unless w has status code.
func wantStatus(t *testing.T, w *httptest.ResponseRecorder, code int) {
	t.Helper()
	if w.Code != code {
		t.Fatalf("status %d, want %d: %s", w.Code, code, w.Body)
	}
}

// wantError checks an error answer: the status and Retry-After that
// api.Codes gives code, and the code in the JSON body.
func wantError(t *testing.T, w *httptest.ResponseRecorder, code string) api.Error {
	t.Helper()
	info, ok := api.Lookup(code)
	if !ok {
		t.Fatalf("test bug: %q is not in api.Codes", code)
	}
	if w.Code != info.Status {
		t.Errorf("status %d, want %d for %s: %s", w.Code, info.Status, code, w.Body)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	e := decode[api.Error](t, w)
	if e.Code != code {
		t.Errorf("code %q, want %q (message %q)", e.Code, code, e.Message)
	}
	if e.Message == "" {
		t.Errorf("error answer without a message: %s", w.Body)
	}
	wantRA := ""
	if info.RetryAfter > 0 {
		wantRA = strconv.Itoa(int((info.RetryAfter + time.Second - 1) / time.Second))
	}
	if ra := w.Header().Get("Retry-After"); ra != wantRA {
		t.Errorf("Retry-After %q, want %q for %s", ra, wantRA, code)
	}
	return e
}

// wantToken checks a write's answer carries wr's token in the Shoal-Token
// header and as the body's "token".
func wantToken(t *testing.T, w *httptest.ResponseRecorder, wr crdt.Write) {
	t.Helper()
	want := wr.Token()
	if got := w.Header().Get(api.HeaderToken); got != want {
		t.Errorf("%s = %q, want %q", api.HeaderToken, got, want)
	}
	body := decode[map[string]any](t, w)
	if body["token"] != want {
		t.Errorf("body token = %v, want %q", body["token"], want)
	}
	if _, heads, err := crdt.ParseToken(want); err != nil || len(heads) != len(wr.Heads) {
		t.Errorf("token does not parse back to the write's heads: %v %v", heads, err)
	}
}

// wantCalls checks the number of calls a fake received of each method.
func wantCalls(t *testing.T, c calls, want map[string]int) {
	t.Helper()
	for m, n := range want {
		if c[m] != n {
			t.Errorf("%s called %d times, want %d", m, c[m], n)
		}
	}
}
