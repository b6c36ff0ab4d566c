package httpapi

import (
	"context"
	"encoding/json"
	"io"
	"time"

	cid "github.com/ipfs/go-cid"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/crdt"
	"github.com/shoal-mesh/shoal/crdt/collections"
	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/inference"
	"github.com/shoal-mesh/shoal/lifecycle"
	"github.com/shoal-mesh/shoal/rag"
	"github.com/shoal-mesh/shoal/serving"
	"github.com/shoal-mesh/shoal/sessions"
)

// The interfaces below are what the handlers consume, each as small as
// its routes need; peer.New passes the real components (the replica, the
// lifecycle, the serving path, the retrieval service), and the handler
// tests pass fakes.

// Peer is the peer as a whole: its identity and its status.
type Peer interface {
	ID() string
	Status(ctx context.Context) (api.Status, error)
}

// Consistency is this peer's view of how fresh it is (the replica).
type Consistency interface {
	Staleness() crdt.Staleness
	// WaitFor returns once every head is processed here, or ctx ends.
	WaitFor(ctx context.Context, heads []cid.Cid) error
	// Position is a token naming everything this peer has now.
	Position(ctx context.Context) crdt.Write
}

// Models is the model registry as this peer serves it (the lifecycle).
type Models interface {
	List(ctx context.Context) (api.ModelList, error)
	Model(ctx context.Context, name string) (api.ModelInfo, error)
	Push(ctx context.Context, r io.Reader, m models.Manifest) (models.Manifest, crdt.Write, error)
	Activate(ctx context.Context, model, version string) (models.Activation, crdt.Write, error)
	Rollback(ctx context.Context, model string) (models.Activation, crdt.Write, error)
	StartPull(ctx context.Context, model, version string) (api.PullResult, bool, error)
	Artifact(ctx context.Context, model, version string) (models.Manifest, io.ReadCloser, error)
	ServingVersion(ctx context.Context, model string) (string, error)
	// CurrentServing is a model's current activation (nil: none) and the
	// version served here ("": none): Model without the versions.
	CurrentServing(ctx context.Context, name string) (*models.Activation, string, error)
	// Watch signals (coalesced, never closed) whenever a model's
	// current or serving version may have changed; stop ends it and may
	// be called more than once.
	Watch() (changed <-chan struct{}, stop func())
	// OIP v2 readiness and metadata.
	Ready(ctx context.Context) (bool, string)
	ModelReady(ctx context.Context, model, version string) (lifecycle.ModelReadiness, error)
	Metadata(ctx context.Context, model, version string) (inference.ModelMetadata, string, error)
}

// Inference is the serving path.
type Inference interface {
	Infer(ctx context.Context, c serving.Call) (serving.Answer, error)
	// Record counts a request that failed before it became a call.
	Record(model, version, outcome string)
}

// CacheFlusher replicates result-cache flushes.
type CacheFlusher interface {
	Flush(ctx context.Context, model string) (api.CacheFlush, crdt.Write, error)
}

// Retrieval is the retrieval service.
type Retrieval interface {
	// EmbedTexts embeds texts with the embedder ref (model@version),
	// saying which of them it truncated.
	EmbedTexts(ctx context.Context, ref string, texts []string) (rag.Embedding, error)
	// PrepareDocs validates and embeds documents; truncated lists the ids
	// of those whose text was cut before it was embedded.
	PrepareDocs(ctx context.Context, c string, reqs []api.DocRequest) (docs []collections.Doc, truncated []string, err error)
	Spec(ctx context.Context, c string) (collections.Spec, error)
	CreateCollection(ctx context.Context, spec collections.Spec) (collections.Spec, crdt.Write, error)
	PutDocs(ctx context.Context, c string, docs []collections.Doc) (crdt.Write, error)
	Doc(ctx context.Context, c, id string) (collections.Doc, error)
	DeleteDoc(ctx context.Context, c, id string) (crdt.Write, error)
	Collections() []api.CollectionInfo
	Collection(c string) (api.CollectionInfo, bool)
	// CaughtUp returns once the indexes reflect every change this peer
	// had when it was called, or ctx ends.
	CaughtUp(ctx context.Context) error
	Query(ctx context.Context, c string, q []float32, k int, filter map[string]string) ([]api.Result, api.Freshness, error)
	ObserveQuery(d time.Duration)
}

// Disk guards the data disk's free-space reserve.
type Disk interface {
	// CheckSpace fails (store.ErrDiskFull) when n more bytes would cut
	// into the reserve.
	CheckSpace(n int64) error
}

// Sessions are the conversation sessions (sessions.Service).
type Sessions interface {
	Put(ctx context.Context, id string, ttl time.Duration, metadata json.RawMessage, siteOnly bool) (sessions.Token, error)
	Append(ctx context.Context, id, role, text string, metadata json.RawMessage) (sessions.Token, error)
	Delete(ctx context.Context, id string) (sessions.Token, error)
	// Get waits (within ctx) for after when it is set.
	Get(ctx context.Context, id string, after *sessions.Token) (sessions.View, error)
	Recent(ctx context.Context, id string, n int) ([]sessions.Turn, error)
}
