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
	e, sess, m, err := s.embedder(ctx, ref)
	if err != nil {
		return nil, 0, "", err
	}
	defer sess.Release()
	out := make([][]float32, len(texts))
	var missIdx []int
	var missTexts []string
	for i, t := range texts {
		if raw, ok := s.cache.Get(ctx, resultcache.KeyOf(m.CID, []byte(t)), e.Ref()); ok {
			if v, err := collections.DecodeVector(string(raw)); err == nil {
				out[i] = v
				s.cacheLookups.WithLabelValues("hit").Inc()
				continue
			}
		}
		s.cacheLookups.WithLabelValues("miss").Inc()
		missIdx = append(missIdx, i)
		missTexts = append(missTexts, t)
	}
	tokens := 0
	for start := 0; start < len(missTexts); start += 32 {
		end := min(start+32, len(missTexts))
		vecs, tk, err := e.Embed(ctx, sess, missTexts[start:end])
		if err != nil {
			return nil, 0, "", err
		}
		tokens += tk
		for j, v := range vecs {
			i := missIdx[start+j]
			out[i] = v
			s.cache.Put(ctx, resultcache.KeyOf(m.CID, []byte(texts[i])), e.Ref(), m.Version, []byte(collections.EncodeVector(v)))
		}
	}
	s.embedded.Add(float64(len(missTexts)))
	return out, tokens, sess.Model + "@" + sess.Version, nil
}

// PrepareDocs validates documents for collection c and embeds those that
// came without a vector.
func (s *Service) PrepareDocs(ctx context.Context, c string, reqs []api.DocRequest) ([]collections.Doc, error) {
	spec, err := s.Store().Collection(ctx, c)
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
		texts, idx = append(texts, d.Text), append(idx, i)
	}
	if len(texts) == 0 {
		return docs, nil
	}
	vecs, _, used, err := s.Embed(ctx, spec.Embedder, texts)
	if err != nil {
		return nil, err
	}
	for j, v := range vecs {
		if err := collections.CheckVector(v, spec.Dimension); err != nil {
			return nil, fmt.Errorf("%s makes vectors the collection cannot hold: %w", used, err)
		}
		docs[idx[j]].Vector, docs[idx[j]].Embedder = collections.EncodeVector(v), used
	}
	return docs, nil
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
