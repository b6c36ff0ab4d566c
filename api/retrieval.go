package api

import (
	"encoding/json"
	"time"

	"github.com/shoal-mesh/shoal/crdt/collections"
)

// EmbeddingsRequest is the OpenAI embeddings request (POST /v1/embeddings).
type EmbeddingsRequest struct {
	Model          string          `json:"model"`
	Input          json.RawMessage `json:"input"`
	EncodingFormat string          `json:"encoding_format,omitempty"`
	Dimensions     int             `json:"dimensions,omitempty"`
	User           string          `json:"user,omitempty"`
}

// CreateCollectionRequest is the body of POST /v1/collections.
type CreateCollectionRequest struct {
	Name      string `json:"name"`
	Embedder  string `json:"embedder"`
	Dimension int    `json:"dimension,omitempty"`
	Metric    string `json:"metric,omitempty"`
	// Vectors: "float32" (default) or "int8" (cosine only): how the index
	// holds them.
	Vectors string `json:"vectors,omitempty"`
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

// DocsRequest is the body of POST /v1/collections/{c}/docs.
type DocsRequest struct {
	Docs []DocRequest `json:"docs"`
}

// DocsResult answers a document write.
type DocsResult struct {
	Collection string   `json:"collection"`
	IDs        []string `json:"ids"`
	Embedder   string   `json:"embedder"`
	Token      string   `json:"token"`
	// Truncated lists the documents whose text was cut at the embedder's
	// token limit before it was embedded (their vectors stand for the
	// beginning only); a caller-given vector is never truncated.
	Truncated []string `json:"truncated,omitempty"`
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
	Collection       string    `json:"collection"`
	Results          []Result  `json:"results"`
	Index            Freshness `json:"index"`
	StalenessSeconds float64   `json:"staleness_seconds"`
	Embedder         string    `json:"embedder,omitempty"`
	// QueryTruncated: the query text was cut at the embedder's token
	// limit before it was embedded.
	QueryTruncated bool `json:"query_truncated,omitempty"`
	// SessionTurns is how many of the session's last user turns
	// (Shoal-Session) were put before the query text when it was
	// embedded.
	SessionTurns int `json:"session_turns,omitempty"`
}

// Result is one query hit with its document.
type Result struct {
	ID       string            `json:"id"`
	Score    float32           `json:"score"`
	Text     string            `json:"text"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

// Freshness describes how current a collection's index is.
type Freshness struct {
	Documents      int       `json:"documents"`
	LastApplied    time.Time `json:"last_applied"`
	NewestDocument time.Time `json:"newest_document,omitzero"`
}

// CollectionInfo is a collection with its index's state on the peer.
type CollectionInfo struct {
	collections.Spec
	Freshness Freshness `json:"index"`
}
