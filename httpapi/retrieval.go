package httpapi

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
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/crdt/collections"
	"github.com/shoal-mesh/shoal/rag"
)

func (a *API) routesRetrieval(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/embeddings", a.handleEmbeddings)
	mux.HandleFunc("POST /v1/collections", a.handleCreateCollection)
	mux.HandleFunc("GET /v1/collections", a.handleCollections)
	mux.HandleFunc("GET /v1/collections/{c}", a.handleCollection)
	mux.HandleFunc("PUT /v1/collections/{c}/docs/{id}", a.handlePutDoc)
	mux.HandleFunc("POST /v1/collections/{c}/docs", a.handlePutDocs)
	mux.HandleFunc("GET /v1/collections/{c}/docs/{id}", a.handleGetDoc)
	mux.HandleFunc("DELETE /v1/collections/{c}/docs/{id}", a.handleDeleteDoc)
	mux.HandleFunc("POST /v1/collections/{c}/query", a.handleQuery)
}

// decodeJSON decodes a request body strictly (unknown fields refused).
func decodeJSON(body io.Reader, v any) error {
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return err
		}
		return fmt.Errorf("%w: request body: %v", errBadBody, err)
	}
	return nil
}

// indexCaughtUp waits until the retrieval indexes reflect every change
// this peer had when the read began (after consistent, that includes a
// Shoal-After token's write).
func (a *API) indexCaughtUp(ctx context.Context) error {
	if err := a.cfg.Retrieval.CaughtUp(ctx); err != nil {
		return fmt.Errorf("%w: %w", errIndexBehind, err)
	}
	return nil
}

// embeddingTexts checks an embeddings request's input: a string or an
// array of 1..MaxEmbedTexts non-empty strings within the text cap.
func embeddingTexts(req api.EmbeddingsRequest) ([]string, error) {
	var texts []string
	var one string
	if err := json.Unmarshal(req.Input, &one); err == nil {
		texts = []string{one}
	} else if err := json.Unmarshal(req.Input, &texts); err != nil {
		return nil, fmt.Errorf("%w: input must be a string or an array of strings (token arrays are not supported)", errBadQuery)
	}
	if len(texts) == 0 || len(texts) > api.MaxEmbedTexts {
		return nil, fmt.Errorf("%w: input must hold 1 to %d texts", errBadQuery, api.MaxEmbedTexts)
	}
	for i, t := range texts {
		if strings.TrimSpace(t) == "" {
			return nil, fmt.Errorf("%w: input %d is empty", errBadQuery, i)
		}
		if len(t) > collections.MaxTextBytes {
			return nil, fmt.Errorf("%w: input %d is %d bytes, at most %d", errTooLarge, i, len(t), collections.MaxTextBytes)
		}
	}
	if f := req.EncodingFormat; f != "" && f != "float" && f != "base64" {
		return nil, fmt.Errorf("%w: encoding_format must be float or base64", errBadQuery)
	}
	return texts, nil
}

func (a *API) handleEmbeddings(w http.ResponseWriter, r *http.Request) {
	a.read(w, r, func(ctx context.Context) error {
		var req api.EmbeddingsRequest
		if err := decodeJSON(r.Body, &req); err != nil {
			return err
		}
		texts, err := embeddingTexts(req)
		if err != nil {
			return err
		}
		ref := req.Model
		if !strings.Contains(ref, "@") {
			// An unpinned model name means the version served here.
			v, err := a.cfg.Models.ServingVersion(ctx, ref)
			if err != nil {
				return err
			}
			ref += "@" + v
		}
		em, err := a.cfg.Retrieval.EmbedTexts(ctx, ref, texts)
		if err != nil {
			return err
		}
		if req.Dimensions > 0 && req.Dimensions != len(em.Vectors[0]) {
			return fmt.Errorf("%w: dimensions %d: %s makes %d", errBadQuery, req.Dimensions, em.Embedder, len(em.Vectors[0]))
		}
		w.Header().Set(api.HeaderModelVersion, strings.SplitN(em.Embedder, "@", 2)[1])
		if n := countTrue(em.Truncated); n > 0 {
			w.Header().Set(api.HeaderTruncated, strconv.Itoa(n))
		}
		writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": embeddingData(em, req.EncodingFormat), "model": em.Embedder,
			"usage": map[string]int{"prompt_tokens": em.Tokens, "total_tokens": em.Tokens}})
		return nil
	})
}

// embeddingData is the OpenAI "data" array, vectors as floats or as
// base64 of little-endian float32s; an input cut at the embedder's token
// limit is marked "truncated": true (an addition to OpenAI's shape).
func embeddingData(em rag.Embedding, format string) []map[string]any {
	data := make([]map[string]any, len(em.Vectors))
	for i, v := range em.Vectors {
		var emb any = v
		if format == "base64" {
			b := make([]byte, 4*len(v))
			for j, f := range v {
				binary.LittleEndian.PutUint32(b[4*j:], math.Float32bits(f))
			}
			emb = base64.StdEncoding.EncodeToString(b)
		}
		data[i] = map[string]any{"object": "embedding", "index": i, "embedding": emb}
		if em.Truncated[i] {
			data[i]["truncated"] = true
		}
	}
	return data
}

func countTrue(bs []bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}

func (a *API) handleCreateCollection(w http.ResponseWriter, r *http.Request) {
	var req api.CreateCollectionRequest
	if err := decodeJSON(r.Body, &req); err != nil {
		writeError(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), api.DefaultWait)
	defer cancel()
	if err := a.createCollection(ctx, w, req); err != nil {
		writeError(w, err)
	}
}

func (a *API) createCollection(ctx context.Context, w http.ResponseWriter, req api.CreateCollectionRequest) error {
	if err := collections.CheckName("collection", req.Name); err != nil {
		return err
	}
	if req.Dimension == 0 {
		// Learn it from the embedder: one embedding of a probe text.
		em, err := a.cfg.Retrieval.EmbedTexts(ctx, req.Embedder, []string{"dimension probe"})
		if err != nil {
			return err
		}
		req.Dimension = len(em.Vectors[0])
	}
	spec, wr, err := a.cfg.Retrieval.CreateCollection(ctx, collections.Spec{Name: req.Name, Embedder: req.Embedder, Dimension: req.Dimension, Metric: req.Metric, Vectors: req.Vectors})
	if err != nil {
		return err
	}
	if wr.Heads == nil {
		// It existed already with this spec: the token names what this
		// peer has, which includes it.
		wr = a.cfg.Consistency.Position(ctx)
	}
	writeResult(w, http.StatusCreated, wr, map[string]any{"collection": spec})
	return nil
}

func (a *API) handleCollections(w http.ResponseWriter, r *http.Request) {
	a.read(w, r, func(ctx context.Context) error {
		if err := a.indexCaughtUp(ctx); err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, map[string]any{"collections": a.cfg.Retrieval.Collections()})
		return nil
	})
}

func (a *API) handleCollection(w http.ResponseWriter, r *http.Request) {
	a.read(w, r, func(ctx context.Context) error {
		if err := a.indexCaughtUp(ctx); err != nil {
			return err
		}
		ci, ok := a.cfg.Retrieval.Collection(r.PathValue("c"))
		if !ok {
			return fmt.Errorf("%w: %s", collections.ErrUnknown, r.PathValue("c"))
		}
		writeJSON(w, http.StatusOK, ci)
		return nil
	})
}

func (a *API) handlePutDoc(w http.ResponseWriter, r *http.Request) {
	var req api.DocRequest
	if err := decodeJSON(r.Body, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.ID != "" && req.ID != r.PathValue("id") {
		writeError(w, fmt.Errorf("%w: id in the body differs from the URL", collections.ErrBadDoc))
		return
	}
	req.ID = r.PathValue("id")
	a.writeDocs(w, r, []api.DocRequest{req})
}

func (a *API) handlePutDocs(w http.ResponseWriter, r *http.Request) {
	var req api.DocsRequest
	if err := decodeJSON(r.Body, &req); err != nil {
		writeError(w, err)
		return
	}
	if len(req.Docs) == 0 || len(req.Docs) > api.MaxBatchDocs {
		writeError(w, fmt.Errorf("%w: docs must hold 1 to %d documents", collections.ErrBadDoc, api.MaxBatchDocs))
		return
	}
	a.writeDocs(w, r, req.Docs)
}

func (a *API) writeDocs(w http.ResponseWriter, r *http.Request, reqs []api.DocRequest) {
	ctx, cancel := context.WithTimeout(r.Context(), api.MaxWait)
	defer cancel()
	c := r.PathValue("c")
	docs, truncated, err := a.cfg.Retrieval.PrepareDocs(ctx, c, reqs)
	if err != nil {
		writeError(w, err)
		return
	}
	wr, err := a.cfg.Retrieval.PutDocs(ctx, c, docs)
	if err != nil {
		writeError(w, err)
		return
	}
	ids := make([]string, len(docs))
	for i, d := range docs {
		ids[i] = d.ID
	}
	body := map[string]any{"collection": c, "ids": ids, "embedder": docs[0].Embedder}
	if len(truncated) > 0 {
		body["truncated"] = truncated
	}
	writeResult(w, http.StatusOK, wr, body)
}

func (a *API) handleGetDoc(w http.ResponseWriter, r *http.Request) {
	a.read(w, r, func(ctx context.Context) error {
		d, err := a.cfg.Retrieval.Doc(ctx, r.PathValue("c"), r.PathValue("id"))
		if err == nil {
			writeJSON(w, http.StatusOK, d)
		}
		return err
	})
}

func (a *API) handleDeleteDoc(w http.ResponseWriter, r *http.Request) {
	c, id := r.PathValue("c"), r.PathValue("id")
	wr, err := a.cfg.Retrieval.DeleteDoc(r.Context(), c, id)
	if err != nil {
		writeError(w, err)
		return
	}
	writeResult(w, http.StatusOK, wr, map[string]any{"collection": c, "deleted": id})
}

// ParseQuery decodes a query body and checks everything that does not need
// the collection: exactly one of text and vector, k in 1..MaxQueryK
// (default 10), text at most collections.MaxTextBytes (JSON cannot carry a
// non-finite number; the dimension is checked against the collection).
// Its errors map to 4xx codes of the catalogue.
func ParseQuery(body io.Reader) (api.QueryRequest, int, error) {
	var req api.QueryRequest
	if err := decodeJSON(body, &req); err != nil {
		return req, 0, err
	}
	k := 10
	if req.K != nil {
		k = *req.K
	}
	if k <= 0 || k > api.MaxQueryK {
		return req, 0, fmt.Errorf("%w: k %d: must be 1..%d", errBadQuery, k, api.MaxQueryK)
	}
	if (req.Text == "") == (req.Vector == nil) {
		return req, 0, fmt.Errorf("%w: give exactly one of text and vector", errBadQuery)
	}
	if len(req.Text) > collections.MaxTextBytes {
		return req, 0, fmt.Errorf("%w: query text of %d bytes, at most %d", errTooLarge, len(req.Text), collections.MaxTextBytes)
	}
	return req, k, nil
}

func (a *API) handleQuery(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	a.read(w, r, func(ctx context.Context) error {
		c := r.PathValue("c")
		req, k, err := ParseQuery(r.Body)
		if err != nil {
			return err
		}
		spec, err := a.cfg.Retrieval.Spec(ctx, c)
		if err != nil {
			return err
		}
		if err := a.indexCaughtUp(ctx); err != nil {
			return err
		}
		resp := api.QueryResponse{Collection: c}
		q := req.Vector
		if req.Text != "" {
			text, err := a.expandQuery(ctx, r, req.Text, &resp)
			if err != nil {
				return err
			}
			em, err := a.cfg.Retrieval.EmbedTexts(ctx, spec.Embedder, []string{text})
			if err != nil {
				return err
			}
			q, resp.Embedder, resp.QueryTruncated = em.Vectors[0], em.Embedder, em.Truncated[0]
		}
		results, fresh, err := a.cfg.Retrieval.Query(ctx, c, q, k, req.Filter)
		if err != nil {
			return err
		}
		if results == nil {
			results = []api.Result{}
		}
		resp.Results, resp.Index, resp.StalenessSeconds = results, fresh, a.cfg.Consistency.Staleness().Seconds
		a.cfg.Retrieval.ObserveQuery(time.Since(start))
		writeJSON(w, http.StatusOK, resp)
		return nil
	})
}

func (a *API) handleCacheFlush(w http.ResponseWriter, r *http.Request) {
	f, wr, err := a.cfg.Flusher.Flush(r.Context(), r.URL.Query().Get("model"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeResult(w, http.StatusOK, wr, map[string]any{"flush": f})
}

// sessionQueryTurns is how many of a session's last user turns expand a
// text query that names the session (Shoal-Session).
const sessionQueryTurns = 2

// expandQuery adds to a text query the last user turns of the session it
// names, so that a follow-up ("and how long does it keep?") is embedded
// with what it follows up on. The query comes first and the turns after
// it, newest first: an embedder that truncates keeps the start, so what
// is cut is the oldest context, never the question. The expanded text is
// capped to the query limit, older turns dropped first.
func (a *API) expandQuery(ctx context.Context, r *http.Request, text string, resp *api.QueryResponse) (string, error) {
	turns, err := a.sessionContext(ctx, r, sessionQueryTurns)
	if err != nil || len(turns) == 0 {
		return text, err
	}
	slices.Reverse(turns)
	for len(turns) > 0 && len(text)+1+len(strings.Join(turns, "\n")) > collections.MaxTextBytes {
		turns = turns[:len(turns)-1]
	}
	resp.SessionTurns = len(turns)
	if len(turns) == 0 {
		return text, nil
	}
	return text + "\n" + strings.Join(turns, "\n"), nil
}
