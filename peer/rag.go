package peer

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-mesh/shoal/crdt/collections"
	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/inference"
	"github.com/shoal-mesh/shoal/inference/resultcache"
	"github.com/shoal-mesh/shoal/rag"
)

// TokenizerSuffix names the companion of an embedder: the tokenizer of
// model m@v is published as m.tokenizer@v (media type MediaTypeTokenizer).
const (
	TokenizerSuffix    = ".tokenizer"
	MediaTypeTokenizer = "application/vnd.shoal.tokenizer+json"
)

// Retrieval limits.
const (
	MaxQueryK     = 1000
	MaxBatchDocs  = 1000
	MaxEmbedTexts = 256
	MaxRAGBody    = 32 << 20
)

// ragState is the peer's retrieval side.
type ragState struct {
	m      *rag.Manager
	cache  *resultcache.Cache // embeddings by (embedder CID, text)
	mu     sync.Mutex
	embeds map[string]*rag.Embedder // by model CID

	cacheHits, cacheMisses atomic.Uint64
	embedded               atomic.Uint64
	queryHist              *histogram
}

// histogram is a tiny fixed-bucket latency histogram for the collector.
type histogram struct {
	mu      sync.Mutex
	buckets []float64
	counts  []uint64
	sum     float64
	count   uint64
}

func newHistogram(buckets []float64) *histogram {
	return &histogram{buckets: buckets, counts: make([]uint64, len(buckets))}
}

func (h *histogram) observe(v float64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, b := range h.buckets {
		if v <= b {
			h.counts[i]++
		}
	}
	h.sum += v
	h.count++
}

func (n *Node) initRAG() *ragState {
	st := &ragState{m: rag.NewManager(n.replica, n.log), embeds: map[string]*rag.Embedder{},
		cache:     resultcache.New(resultcache.Config{MaxBytes: 16 << 20, TTL: 24 * time.Hour}),
		queryHist: newHistogram([]float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1})}
	return st
}

// embedder returns the embedder for model@version (loading its session
// and tokenizer within ctx) and an acquired session: release it.
func (n *Node) embedder(ctx context.Context, ref string) (*rag.Embedder, *inference.Session, models.Manifest, error) {
	model, version, err := collections.SplitRef(ref)
	if err != nil {
		return nil, nil, models.Manifest{}, &apiError{code: http.StatusBadRequest, msg: err.Error()}
	}
	s, m, err := n.session(ctx, model, version)
	if err != nil {
		return nil, nil, m, err
	}
	n.rag.mu.Lock()
	e := n.rag.embeds[m.CID]
	n.rag.mu.Unlock()
	if e != nil {
		return e, s, m, nil
	}
	tm, err := n.registry.Manifest(ctx, model+TokenizerSuffix, version)
	if err != nil {
		s.Release()
		if ctx.Err() != nil {
			// The request's time ran out while looking (the session may
			// just have loaded): not the publisher's mistake.
			return nil, nil, m, modelErr(fmt.Errorf("looking up %s's tokenizer: %w", ref, context.DeadlineExceeded))
		}
		if !errors.Is(err, models.ErrUnknownModel) && !errors.Is(err, models.ErrUnknownVersion) {
			return nil, nil, m, modelErr(err)
		}
		return nil, nil, m, &apiError{code: http.StatusConflict, msg: fmt.Sprintf("%s has no tokenizer: publish it as %s%s@%s (media type %s)", ref, model, TokenizerSuffix, version, MediaTypeTokenizer)}
	}
	tok, err := n.readArtifact(ctx, tm)
	if err != nil {
		s.Release()
		return nil, nil, m, modelErr(err)
	}
	e, err = rag.NewEmbedder(ref, s, tok)
	if err != nil {
		s.Release()
		return nil, nil, m, &apiError{code: http.StatusConflict, msg: err.Error()}
	}
	n.rag.mu.Lock()
	n.rag.embeds[m.CID] = e
	n.rag.mu.Unlock()
	return e, s, m, nil
}

// readArtifact fetches (within ctx) and reads a small artifact.
func (n *Node) readArtifact(ctx context.Context, m models.Manifest) ([]byte, error) {
	spec, err := specOf(m)
	if err != nil {
		return nil, err
	}
	if _, err := n.artifacts.Ensure(ctx, spec); err != nil {
		return nil, err
	}
	rd, err := n.artifacts.Open(ctx, spec)
	if err != nil {
		return nil, err
	}
	defer rd.Close()
	return io.ReadAll(io.LimitReader(rd, 64<<20))
}

// embed returns unit vectors for texts with the embedder ref, through the
// embedding cache (keyed by the embedder's CID and the text).
func (n *Node) embed(ctx context.Context, ref string, texts []string) ([][]float32, int, string, error) {
	e, s, m, err := n.embedder(ctx, ref)
	if err != nil {
		return nil, 0, "", err
	}
	defer s.Release()
	out := make([][]float32, len(texts))
	var missIdx []int
	var missTexts []string
	for i, t := range texts {
		if raw, ok := n.rag.cache.Get(ctx, resultcache.KeyOf(m.CID, []byte(t)), e.Ref()); ok {
			if v, err := collections.DecodeVector(string(raw)); err == nil {
				out[i] = v
				n.rag.cacheHits.Add(1)
				continue
			}
		}
		n.rag.cacheMisses.Add(1)
		missIdx = append(missIdx, i)
		missTexts = append(missTexts, t)
	}
	tokens := 0
	for start := 0; start < len(missTexts); start += 32 {
		end := min(start+32, len(missTexts))
		vecs, tk, err := e.Embed(ctx, s, missTexts[start:end])
		if err != nil {
			if errors.Is(err, inference.ErrBadRequest) {
				return nil, 0, "", &apiError{code: http.StatusBadRequest, msg: err.Error()}
			}
			return nil, 0, "", err
		}
		tokens += tk
		for j, v := range vecs {
			i := missIdx[start+j]
			out[i] = v
			n.rag.cache.Put(ctx, resultcache.KeyOf(m.CID, []byte(texts[i])), e.Ref(), m.Version, []byte(collections.EncodeVector(v)))
		}
	}
	n.rag.embedded.Add(uint64(len(missTexts)))
	return out, tokens, s.Model + "@" + s.Version, nil
}

func ragErr(err error) error {
	var ae *apiError
	if errors.As(err, &ae) {
		return err
	}
	switch {
	case errors.Is(err, collections.ErrUnknown), errors.Is(err, collections.ErrUnknownDoc):
		return &apiError{code: http.StatusNotFound, msg: err.Error()}
	case errors.Is(err, collections.ErrExists):
		return &apiError{code: http.StatusConflict, msg: err.Error()}
	case errors.Is(err, collections.ErrTooLarge):
		return &apiError{code: http.StatusRequestEntityTooLarge, msg: err.Error()}
	case errors.Is(err, collections.ErrBadName), errors.Is(err, collections.ErrBadSpec), errors.Is(err, collections.ErrBadDoc),
		errors.Is(err, collections.ErrDimension), errors.Is(err, collections.ErrEmptyText), errors.Is(err, collections.ErrBadEmbedder),
		errors.Is(err, collections.ErrBadMetric), errors.Is(err, collections.ErrNonFinite), errors.Is(err, collections.ErrZeroVector):
		return &apiError{code: http.StatusBadRequest, msg: err.Error()}
	}
	return modelErr(err)
}

func decodeBody(r *http.Request, v any) error { return decodeJSON(r.Body, v) }

func decodeJSON(body io.Reader, v any) error {
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return &apiError{code: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("request body larger than %d bytes", mbe.Limit)}
		}
		return &apiError{code: http.StatusBadRequest, msg: "request body: " + err.Error()}
	}
	return nil
}

// indexCaughtUp waits until the retrieval indexes reflect every change
// this peer had when the read began (after consistent, that includes a
// Shoal-After token's write); 503 if they do not within ctx.
func (n *Node) indexCaughtUp(ctx context.Context) error {
	if err := n.rag.m.CaughtUp(ctx); err != nil {
		return &apiError{code: http.StatusServiceUnavailable, retry: time.Second, msg: err.Error()}
	}
	return nil
}

func (n *Node) routesRAG(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/embeddings", n.handleEmbeddings)
	mux.HandleFunc("POST /v1/collections", n.handleCreateCollection)
	mux.HandleFunc("GET /v1/collections", n.handleCollections)
	mux.HandleFunc("GET /v1/collections/{c}", n.handleCollection)
	mux.HandleFunc("PUT /v1/collections/{c}/docs/{id}", n.handlePutDoc)
	mux.HandleFunc("POST /v1/collections/{c}/docs", n.handlePutDocs)
	mux.HandleFunc("GET /v1/collections/{c}/docs/{id}", n.handleGetDoc)
	mux.HandleFunc("DELETE /v1/collections/{c}/docs/{id}", n.handleDeleteDoc)
	mux.HandleFunc("POST /v1/collections/{c}/query", n.handleQuery)
}

// EmbeddingsRequest is the OpenAI embeddings request.
type EmbeddingsRequest struct {
	Model          string          `json:"model"`
	Input          json.RawMessage `json:"input"`
	EncodingFormat string          `json:"encoding_format,omitempty"`
	Dimensions     int             `json:"dimensions,omitempty"`
	User           string          `json:"user,omitempty"`
}

func (n *Node) handleEmbeddings(w http.ResponseWriter, r *http.Request) {
	ctx, cancel, err := n.consistent(w, r)
	if err != nil {
		writeAPIError(w, err)
		return
	}
	defer cancel()
	var req EmbeddingsRequest
	if err := decodeBody(r, &req); err != nil {
		writeAPIError(w, err)
		return
	}
	var texts []string
	var one string
	if err := json.Unmarshal(req.Input, &one); err == nil {
		texts = []string{one}
	} else if err := json.Unmarshal(req.Input, &texts); err != nil {
		writeError(w, http.StatusBadRequest, "input must be a string or an array of strings (token arrays are not supported)")
		return
	}
	if len(texts) == 0 || len(texts) > MaxEmbedTexts {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("input must hold 1 to %d texts", MaxEmbedTexts))
		return
	}
	for i, t := range texts {
		if strings.TrimSpace(t) == "" {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("input %d is empty", i))
			return
		}
		if len(t) > collections.MaxTextBytes {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("input %d is %d bytes, at most %d", i, len(t), collections.MaxTextBytes))
			return
		}
	}
	format := req.EncodingFormat
	if format == "" {
		format = "float"
	}
	if format != "float" && format != "base64" {
		writeError(w, http.StatusBadRequest, "encoding_format must be float or base64")
		return
	}
	ref := req.Model
	if !strings.Contains(ref, "@") {
		// An unpinned model name means its current version here.
		v, ok := n.life.Serving(ref)
		if !ok {
			if _, err := n.registry.State(ctx, ref); err != nil {
				writeAPIError(w, modelErr(err))
				return
			}
			writeAPIError(w, &apiError{code: http.StatusServiceUnavailable, retry: 5 * time.Second, msg: fmt.Sprintf("no verified version of %s on this peer yet", ref)})
			return
		}
		ref += "@" + v.Version
	}
	vecs, tokens, used, err := n.embed(ctx, ref, texts)
	if err != nil {
		writeAPIError(w, ragErr(err))
		return
	}
	if req.Dimensions > 0 && req.Dimensions != len(vecs[0]) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("dimensions %d: %s makes %d", req.Dimensions, used, len(vecs[0])))
		return
	}
	data := make([]map[string]any, len(vecs))
	for i, v := range vecs {
		var emb any = v
		if format == "base64" {
			b := make([]byte, 4*len(v))
			for j, f := range v {
				binary.LittleEndian.PutUint32(b[4*j:], math.Float32bits(f))
			}
			emb = base64.StdEncoding.EncodeToString(b)
		}
		data[i] = map[string]any{"object": "embedding", "index": i, "embedding": emb}
	}
	w.Header().Set(HeaderModelVersion, strings.SplitN(used, "@", 2)[1])
	writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": data, "model": used,
		"usage": map[string]int{"prompt_tokens": tokens, "total_tokens": tokens}})
}

// CreateCollectionRequest is the body of POST /v1/collections.
type CreateCollectionRequest struct {
	Name      string `json:"name"`
	Embedder  string `json:"embedder"`
	Dimension int    `json:"dimension,omitempty"`
	Metric    string `json:"metric,omitempty"`
}

func (n *Node) handleCreateCollection(w http.ResponseWriter, r *http.Request) {
	var req CreateCollectionRequest
	if err := decodeBody(r, &req); err != nil {
		writeAPIError(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), defaultWait)
	defer cancel()
	if err := collections.CheckName("collection", req.Name); err != nil {
		writeAPIError(w, ragErr(err))
		return
	}
	if req.Dimension == 0 {
		// Learn it from the embedder: one embedding of a probe text.
		vecs, _, _, err := n.embed(ctx, req.Embedder, []string{"dimension probe"})
		if err != nil {
			writeAPIError(w, ragErr(err))
			return
		}
		req.Dimension = len(vecs[0])
	}
	spec, wr, err := n.rag.m.Store().CreateCollection(ctx, collections.Spec{Name: req.Name, Embedder: req.Embedder, Dimension: req.Dimension, Metric: req.Metric})
	if err != nil {
		writeAPIError(w, ragErr(err))
		return
	}
	if wr.Heads == nil {
		wr = n.replica.Position(ctx)
	}
	writeResult(w, http.StatusCreated, wr, map[string]any{"collection": spec})
}

func (n *Node) handleCollections(w http.ResponseWriter, r *http.Request) {
	ctx, cancel, err := n.consistent(w, r)
	if err != nil {
		writeAPIError(w, err)
		return
	}
	defer cancel()
	if err := n.indexCaughtUp(ctx); err != nil {
		writeAPIError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"collections": n.rag.m.Collections()})
}

func (n *Node) handleCollection(w http.ResponseWriter, r *http.Request) {
	ctx, cancel, err := n.consistent(w, r)
	if err != nil {
		writeAPIError(w, err)
		return
	}
	defer cancel()
	if err := n.indexCaughtUp(ctx); err != nil {
		writeAPIError(w, err)
		return
	}
	ci, ok := n.rag.m.Collection(r.PathValue("c"))
	if !ok {
		writeAPIError(w, ragErr(fmt.Errorf("%w: %s", collections.ErrUnknown, r.PathValue("c"))))
		return
	}
	writeJSON(w, http.StatusOK, ci)
}

// DocRequest is one document to write.
type DocRequest struct {
	ID       string            `json:"id,omitempty"`
	Text     string            `json:"text"`
	Metadata map[string]string `json:"metadata,omitempty"`
	// Vector, when given, is used instead of embedding Text (it must have
	// the collection's dimension).
	Vector []float32 `json:"vector,omitempty"`
}

// prepareDocs validates and embeds documents for collection c.
func (n *Node) prepareDocs(ctx context.Context, c string, reqs []DocRequest) ([]collections.Doc, error) {
	spec, err := n.rag.m.Store().Collection(ctx, c)
	if err != nil {
		return nil, err
	}
	docs := make([]collections.Doc, len(reqs))
	var texts []string
	var idx []int
	seen := map[string]bool{}
	for i, d := range reqs {
		if err := collections.CheckDoc(d.ID, d.Text, d.Metadata); err != nil {
			return nil, err
		}
		if seen[d.ID] {
			return nil, fmt.Errorf("%w: id %s given twice", collections.ErrBadDoc, d.ID)
		}
		seen[d.ID] = true
		docs[i] = collections.Doc{ID: d.ID, Text: d.Text, Metadata: d.Metadata}
		if d.Vector != nil {
			if err := collections.CheckVector(d.Vector, spec.Dimension); err != nil {
				return nil, fmt.Errorf("document %s: %w", d.ID, err)
			}
			docs[i].Vector, docs[i].Embedder = collections.EncodeVector(d.Vector), "client"
			continue
		}
		texts = append(texts, d.Text)
		idx = append(idx, i)
	}
	if len(texts) > 0 {
		vecs, _, used, err := n.embed(ctx, spec.Embedder, texts)
		if err != nil {
			return nil, err
		}
		for j, v := range vecs {
			if err := collections.CheckVector(v, spec.Dimension); err != nil {
				return nil, fmt.Errorf("%s makes vectors the collection cannot hold: %w", used, err)
			}
			docs[idx[j]].Vector, docs[idx[j]].Embedder = collections.EncodeVector(v), used
		}
	}
	return docs, nil
}

func (n *Node) handlePutDoc(w http.ResponseWriter, r *http.Request) {
	var req DocRequest
	if err := decodeBody(r, &req); err != nil {
		writeAPIError(w, err)
		return
	}
	if req.ID != "" && req.ID != r.PathValue("id") {
		writeError(w, http.StatusBadRequest, "id in the body differs from the URL")
		return
	}
	req.ID = r.PathValue("id")
	n.writeDocs(w, r, []DocRequest{req})
}

func (n *Node) handlePutDocs(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Docs []DocRequest `json:"docs"`
	}
	if err := decodeBody(r, &req); err != nil {
		writeAPIError(w, err)
		return
	}
	if len(req.Docs) == 0 || len(req.Docs) > MaxBatchDocs {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("docs must hold 1 to %d documents", MaxBatchDocs))
		return
	}
	n.writeDocs(w, r, req.Docs)
}

func (n *Node) writeDocs(w http.ResponseWriter, r *http.Request, reqs []DocRequest) {
	ctx, cancel := context.WithTimeout(r.Context(), maxWait)
	defer cancel()
	c := r.PathValue("c")
	docs, err := n.prepareDocs(ctx, c, reqs)
	if err != nil {
		writeAPIError(w, ragErr(err))
		return
	}
	wr, err := n.rag.m.Store().PutDocs(ctx, c, docs)
	if err != nil {
		writeAPIError(w, ragErr(err))
		return
	}
	ids := make([]string, len(docs))
	for i, d := range docs {
		ids[i] = d.ID
	}
	writeResult(w, http.StatusOK, wr, map[string]any{"collection": c, "ids": ids, "embedder": docs[0].Embedder})
}

func (n *Node) handleGetDoc(w http.ResponseWriter, r *http.Request) {
	ctx, cancel, err := n.consistent(w, r)
	if err != nil {
		writeAPIError(w, err)
		return
	}
	defer cancel()
	d, err := n.rag.m.Store().Doc(ctx, r.PathValue("c"), r.PathValue("id"))
	if err != nil {
		writeAPIError(w, ragErr(err))
		return
	}
	writeJSON(w, http.StatusOK, d)
}

func (n *Node) handleDeleteDoc(w http.ResponseWriter, r *http.Request) {
	c, id := r.PathValue("c"), r.PathValue("id")
	if _, err := n.rag.m.Store().Collection(r.Context(), c); err != nil {
		writeAPIError(w, ragErr(err))
		return
	}
	wr, err := n.rag.m.Store().DeleteDoc(r.Context(), c, id)
	if err != nil {
		writeAPIError(w, ragErr(err))
		return
	}
	writeResult(w, http.StatusOK, wr, map[string]any{"collection": c, "deleted": id})
}

// QueryRequest is the body of POST /v1/collections/{c}/query.
type QueryRequest struct {
	Text   string            `json:"text,omitempty"`
	Vector []float32         `json:"vector,omitempty"`
	K      *int              `json:"k,omitempty"`
	Filter map[string]string `json:"filter,omitempty"`
}

// QueryResponse is its answer.
type QueryResponse struct {
	Collection       string        `json:"collection"`
	Results          []rag.Result  `json:"results"`
	Index            rag.Freshness `json:"index"`
	StalenessSeconds float64       `json:"staleness_seconds"`
	Embedder         string        `json:"embedder,omitempty"`
}

// ParseQuery decodes a query body and checks everything that does not need
// the collection: exactly one of text and vector, k in 1..MaxQueryK
// (default 10), text at most collections.MaxTextBytes (JSON cannot carry a
// non-finite number; the dimension is checked against the collection).
// Errors carry the HTTP status to answer with.
func ParseQuery(body io.Reader) (QueryRequest, int, error) {
	var req QueryRequest
	if err := decodeJSON(body, &req); err != nil {
		return req, 0, err
	}
	k := 10
	if req.K != nil {
		k = *req.K
	}
	if k <= 0 || k > MaxQueryK {
		return req, 0, &apiError{code: http.StatusBadRequest, msg: fmt.Sprintf("k %d: must be 1..%d", k, MaxQueryK)}
	}
	if (req.Text == "") == (req.Vector == nil) {
		return req, 0, &apiError{code: http.StatusBadRequest, msg: "give exactly one of text and vector"}
	}
	if len(req.Text) > collections.MaxTextBytes {
		return req, 0, &apiError{code: http.StatusRequestEntityTooLarge, msg: "query text too large"}
	}
	return req, k, nil
}

func (n *Node) handleQuery(w http.ResponseWriter, r *http.Request) {
	ctx, cancel, err := n.consistent(w, r)
	if err != nil {
		writeAPIError(w, err)
		return
	}
	defer cancel()
	start := time.Now()
	c := r.PathValue("c")
	req, k, err := ParseQuery(r.Body)
	if err != nil {
		writeAPIError(w, err)
		return
	}
	spec, err := n.rag.m.Store().Collection(ctx, c)
	if err != nil {
		writeAPIError(w, ragErr(err))
		return
	}
	if err := n.indexCaughtUp(ctx); err != nil {
		writeAPIError(w, err)
		return
	}
	q := req.Vector
	resp := QueryResponse{Collection: c}
	if req.Text != "" {
		vecs, _, used, err := n.embed(ctx, spec.Embedder, []string{req.Text})
		if err != nil {
			writeAPIError(w, ragErr(err))
			return
		}
		q, resp.Embedder = vecs[0], used
	}
	results, fresh, err := n.rag.m.Query(ctx, c, q, k, req.Filter)
	if err != nil {
		writeAPIError(w, ragErr(err))
		return
	}
	if results == nil {
		results = []rag.Result{}
	}
	resp.Results, resp.Index, resp.StalenessSeconds = results, fresh, n.replica.Staleness().Seconds
	n.rag.queryHist.observe(time.Since(start).Seconds())
	writeJSON(w, http.StatusOK, resp)
}
