package api

import "time"

// Server limits. Requests past them are refused with CodeBodyTooLarge or
// a 400 naming the limit.
const (
	// MaxBodyBytes bounds request bodies unless a route sets its own limit.
	MaxBodyBytes = 1 << 20
	// MaxInferBodyBytes bounds an inference request body (JSON tensors
	// are verbose: a 640×640 RGB image is about 12 MB of JSON).
	MaxInferBodyBytes = 64 << 20
	// MaxArtifactBytes bounds an artifact uploaded through the API.
	MaxArtifactBytes = 4 << 30
	// MaxRAGBody bounds collection and document writes.
	MaxRAGBody = 32 << 20
	// MaxQueryK bounds the k of a retrieval query.
	MaxQueryK = 1000
	// MaxBatchDocs bounds the documents of one batch write.
	MaxBatchDocs = 1000
	// MaxEmbedTexts bounds the inputs of one embeddings request.
	MaxEmbedTexts = 256
)

// Waiting: how long a request may wait for a token's heads or an
// artifact (HeaderTimeout), by default and at most.
const (
	DefaultWait = 10 * time.Second
	MaxWait     = 2 * time.Minute
)

// Embedders and their tokenizers: the tokenizer of embedder m@v is
// published as m.tokenizer@v with media type MediaTypeTokenizer.
const (
	TokenizerSuffix    = ".tokenizer"
	MediaTypeTokenizer = "application/vnd.shoal.tokenizer+json"
)
