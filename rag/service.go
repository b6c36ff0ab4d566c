package rag

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/crdt"
	"github.com/shoal-mesh/shoal/crdt/collections"
	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/inference"
	"github.com/shoal-mesh/shoal/inference/resultcache"
)

// Errors of embedding.
var (
	// ErrNoTokenizer: the embedder m@v has no m.tokenizer@v published.
	ErrNoTokenizer = errors.New("the embedder has no tokenizer")
	// ErrEmbedder: the embedder's model or tokenizer cannot embed text.
	ErrEmbedder = errors.New("not a usable embedder")
)

// Models gives the service sessions and artifacts of versioned models
// (the lifecycle implements it).
type Models interface {
	// Session returns model@version's session (loading it within ctx);
	// Release it.
	Session(ctx context.Context, model, version string) (*inference.Session, models.Manifest, error)
	Manifest(ctx context.Context, model, version string) (models.Manifest, error)
	// ReadArtifact fetches and reads at most limit bytes of a version.
	ReadArtifact(ctx context.Context, m models.Manifest, limit int64) ([]byte, error)
}

// Service is retrieval on a peer: the Manager's indexes, plus embedding
// with replicated, versioned embedders (their sessions and tokenizers),
// through an embedding cache keyed by the embedder's CID and the text.
type Service struct {
	*Manager
	models Models
	cache  *resultcache.Cache

	mu     sync.Mutex
	embeds map[string]*Embedder // by model CID

	cacheLookups *prometheus.CounterVec
	embedded     prometheus.Counter
	queryTime    prometheus.Histogram
}

// NewService returns the retrieval service over replica's collections.
func NewService(replica *crdt.Replica, m Models, log *slog.Logger) *Service {
	return &Service{
		Manager: NewManager(replica, log), models: m, embeds: map[string]*Embedder{},
		cache: resultcache.New(resultcache.Config{MaxBytes: 16 << 20, TTL: 24 * time.Hour}),
		cacheLookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_embedding_cache_requests_total", Help: "Embedding cache lookups by result.",
		}, []string{"result"}),
		embedded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_embeddings_computed_total", Help: "Texts embedded on this peer (cache misses).",
		}),
		queryTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "shoal_rag_query_duration_seconds", Help: "Retrieval query latency (embedding included).",
			Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1},
		}),
	}
}

// Collectors are the service's metrics, for the peer's registry.
func (s *Service) Collectors() []prometheus.Collector {
	return []prometheus.Collector{s.cacheLookups, s.embedded, s.queryTime}
}

// ObserveQuery records one query's latency.
func (s *Service) ObserveQuery(d time.Duration) { s.queryTime.Observe(d.Seconds()) }

// embedder returns the embedder for model@version (loading its session
// and tokenizer within ctx) and an acquired session: release it.
func (s *Service) embedder(ctx context.Context, ref string) (*Embedder, *inference.Session, models.Manifest, error) {
	model, version, err := collections.SplitRef(ref)
	if err != nil {
		return nil, nil, models.Manifest{}, err
	}
	sess, m, err := s.models.Session(ctx, model, version)
	if err != nil {
		return nil, nil, m, err
	}
	s.mu.Lock()
	e := s.embeds[m.CID]
	s.mu.Unlock()
	if e != nil {
		return e, sess, m, nil
	}
	e, err = s.loadEmbedder(ctx, ref, sess)
	if err != nil {
		sess.Release()
		return nil, nil, m, err
	}
	s.mu.Lock()
	s.embeds[m.CID] = e
	s.mu.Unlock()
	return e, sess, m, nil
}

// loadEmbedder pairs an embedder's session with its tokenizer.
func (s *Service) loadEmbedder(ctx context.Context, ref string, sess *inference.Session) (*Embedder, error) {
	model, version, _ := collections.SplitRef(ref)
	tm, err := s.models.Manifest(ctx, model+api.TokenizerSuffix, version)
	switch {
	case err == nil:
	case ctx.Err() != nil:
		// The request's time ran out while looking (the session may just
		// have loaded): not the publisher's mistake.
		return nil, fmt.Errorf("looking up %s's tokenizer: %w", ref, context.DeadlineExceeded)
	case errors.Is(err, models.ErrUnknownModel), errors.Is(err, models.ErrUnknownVersion):
		return nil, fmt.Errorf("%w: %s: publish it as %s%s@%s (media type %s)", ErrNoTokenizer, ref, model, api.TokenizerSuffix, version, api.MediaTypeTokenizer)
	default:
		return nil, err
	}
	tok, err := s.models.ReadArtifact(ctx, tm, 64<<20)
	if err != nil {
		return nil, err
	}
	e, err := NewEmbedder(ref, sess, tok)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrEmbedder, err)
	}
	return e, nil
}

// Embed returns unit vectors for texts with the embedder ref, the tokens
// it read, and the model@version that embedded them.
func (s *Service) Embed(ctx context.Context, ref string, texts []string) ([][]float32, int, string, error) {
	em, err := s.EmbedTexts(ctx, ref, texts)
	return em.Vectors, em.Tokens, em.Embedder, err
}

// EmbedTexts is Embed that also reports which texts were truncated at
// MaxTokens. Texts found in the embedding cache count no tokens.
func (s *Service) EmbedTexts(ctx context.Context, ref string, texts []string) (Embedding, error) {
	e, sess, m, err := s.embedder(ctx, ref)
	if err != nil {
		return Embedding{}, err
	}
	defer sess.Release()
	out := Embedding{Vectors: make([][]float32, len(texts)), Truncated: make([]bool, len(texts)), Embedder: sess.Model + "@" + sess.Version}
	miss := s.fromCache(ctx, m.CID, e.Ref(), texts, out)
	for start := 0; start < len(miss); start += 32 {
		batch := miss[start:min(start+32, len(miss))]
		batchTexts := make([]string, len(batch))
		for j, i := range batch {
			batchTexts[j] = texts[i]
		}
		em, err := e.EmbedTexts(ctx, sess, batchTexts)
		if err != nil {
			return Embedding{}, err
		}
		out.Tokens += em.Tokens
		for j, i := range batch {
			out.Vectors[i], out.Truncated[i] = em.Vectors[j], em.Truncated[j]
			s.cache.Put(ctx, resultcache.KeyOf(m.CID, []byte(texts[i])), e.Ref(), m.Version, cacheValue(em.Vectors[j], em.Truncated[j]))
		}
	}
	s.embedded.Add(float64(len(miss)))
	return out, nil
}

// fromCache fills out with the cached embeddings of texts and returns the
// indexes of the texts it did not find.
func (s *Service) fromCache(ctx context.Context, modelCID, ref string, texts []string, out Embedding) []int {
	var miss []int
	for i, t := range texts {
		if raw, ok := s.cache.Get(ctx, resultcache.KeyOf(modelCID, []byte(t)), ref); ok {
			if v, cut, err := fromCacheValue(raw); err == nil {
				out.Vectors[i], out.Truncated[i] = v, cut
				s.cacheLookups.WithLabelValues("hit").Inc()
				continue
			}
		}
		s.cacheLookups.WithLabelValues("miss").Inc()
		miss = append(miss, i)
	}
	return miss
}

// cacheValue is an embedding as the cache keeps it: 't' (truncated) or
// 'f', then the vector as collections.EncodeVector writes it.
func cacheValue(v []float32, truncated bool) []byte {
	flag := byte('f')
	if truncated {
		flag = 't'
	}
	return append([]byte{flag}, collections.EncodeVector(v)...)
}

func fromCacheValue(raw []byte) ([]float32, bool, error) {
	if len(raw) == 0 || (raw[0] != 't' && raw[0] != 'f') {
		return nil, false, fmt.Errorf("not a cached embedding")
	}
	v, err := collections.DecodeVector(string(raw[1:]))
	return v, raw[0] == 't', err
}

// PrepareDocs validates documents for collection c and embeds those that
// came without a vector. truncated lists the ids of the documents whose
// text was cut at MaxTokens before it was embedded.
func (s *Service) PrepareDocs(ctx context.Context, c string, reqs []api.DocRequest) (docs []collections.Doc, truncated []string, err error) {
	spec, err := s.Store().Collection(ctx, c)
	if err != nil {
		return nil, nil, err
	}
	docs, idx, err := checkDocs(reqs, spec.Dimension)
	if err != nil || len(idx) == 0 {
		return docs, nil, err
	}
	texts := make([]string, len(idx))
	for j, i := range idx {
		texts[j] = docs[i].Text
	}
	em, err := s.EmbedTexts(ctx, spec.Embedder, texts)
	if err != nil {
		return nil, nil, err
	}
	for j, v := range em.Vectors {
		if err := collections.CheckVector(v, spec.Dimension); err != nil {
			return nil, nil, fmt.Errorf("%s makes vectors the collection cannot hold: %w", em.Embedder, err)
		}
		d := &docs[idx[j]]
		d.Vector, d.Embedder = collections.EncodeVector(v), em.Embedder
		if em.Truncated[j] {
			truncated = append(truncated, d.ID)
		}
	}
	return docs, truncated, nil
}

// checkDocs validates documents for a collection of dimension dim and
// returns them with the caller's vectors in place, and the indexes of
// those that need embedding.
func checkDocs(reqs []api.DocRequest, dim int) ([]collections.Doc, []int, error) {
	docs := make([]collections.Doc, len(reqs))
	var idx []int
	seen := map[string]bool{}
	for i, d := range reqs {
		if err := collections.CheckDoc(d.ID, d.Text, d.Metadata); err != nil {
			return nil, nil, err
		}
		if seen[d.ID] {
			return nil, nil, fmt.Errorf("%w: id %s given twice", collections.ErrBadDoc, d.ID)
		}
		seen[d.ID] = true
		docs[i] = collections.Doc{ID: d.ID, Text: d.Text, Metadata: d.Metadata}
		if d.Vector == nil {
			idx = append(idx, i)
			continue
		}
		if err := collections.CheckVector(d.Vector, dim); err != nil {
			return nil, nil, fmt.Errorf("document %s: %w", d.ID, err)
		}
		docs[i].Vector, docs[i].Embedder = collections.EncodeVector(d.Vector), "client"
	}
	return docs, idx, nil
}

// Spec returns collection c's spec.
func (s *Service) Spec(ctx context.Context, c string) (collections.Spec, error) {
	return s.Store().Collection(ctx, c)
}

// CreateCollection replicates a new collection's spec.
func (s *Service) CreateCollection(ctx context.Context, spec collections.Spec) (collections.Spec, crdt.Write, error) {
	return s.Store().CreateCollection(ctx, spec)
}

// PutDocs replicates prepared documents.
func (s *Service) PutDocs(ctx context.Context, c string, docs []collections.Doc) (crdt.Write, error) {
	return s.Store().PutDocs(ctx, c, docs)
}

// Doc reads one document.
func (s *Service) Doc(ctx context.Context, c, id string) (collections.Doc, error) {
	return s.Store().Doc(ctx, c, id)
}

// DeleteDoc replicates a document's deletion (the collection must exist).
func (s *Service) DeleteDoc(ctx context.Context, c, id string) (crdt.Write, error) {
	if _, err := s.Store().Collection(ctx, c); err != nil {
		return crdt.Write{}, err
	}
	return s.Store().DeleteDoc(ctx, c, id)
}
