package api

// Headers of the consistency promises (design §2; docs/consistency.md).
const (
	// HeaderStaleness is on every answer: this peer's staleness ("0.412s").
	HeaderStaleness = "Shoal-Staleness"
	// HeaderMaxStaleness: the largest staleness the caller accepts ("2s").
	HeaderMaxStaleness = "Shoal-Max-Staleness"
	// HeaderStalenessPolicy: "flag" serves a request that breaks the bound
	// and marks it with HeaderStale instead of refusing it.
	HeaderStalenessPolicy = "Shoal-Staleness-Policy"
	// HeaderStale is "true" on a response served beyond the asked bound.
	HeaderStale = "Shoal-Stale"
	// HeaderAfter carries a read-your-writes token from an earlier write.
	HeaderAfter = "Shoal-After"
	// HeaderToken carries the read-your-writes token of a write's response.
	HeaderToken = "Shoal-Token"
	// HeaderModelVersion names the model version that answered.
	HeaderModelVersion = "Shoal-Model-Version"
	// HeaderTimeout bounds how long a request may wait (for a token's
	// heads, or for an artifact to arrive). Default 10s, at most 2m.
	HeaderTimeout = "Shoal-Timeout"
)

// Headers of inference.
const (
	// HeaderCache says how the result cache answered (CacheHit, …).
	HeaderCache = "Shoal-Cache"
	// HeaderRoute: "warm" lets a pinned inference request be forwarded to
	// a peer that has the version loaded.
	HeaderRoute = "Shoal-Route"
	// HeaderRoutedTo names the peer that computed a forwarded answer.
	HeaderRoutedTo = "Shoal-Routed-To"
	// HeaderWarmup carries a version's warm-up request (base64 of OIP v2
	// JSON) on PUT /v1/models/{m}/versions/{v}.
	HeaderWarmup = "Shoal-Warmup"
	// HeaderArtifactSHA256 is the sha256 of an artifact's bytes.
	HeaderArtifactSHA256 = "Shoal-Artifact-Sha256"
)

// Headers of retrieval.
const (
	// HeaderTruncated is on an embeddings answer that cut inputs at the
	// embedder's token limit: how many it cut ("2").
	HeaderTruncated = "Shoal-Truncated"
)

// Values of HeaderCache.
const (
	CacheHit    = "hit"
	CacheMiss   = "miss"
	CacheBypass = "bypass" // the model opted out, or the cache is off
)

// RouteWarm is the value of HeaderRoute that opts a request in.
const RouteWarm = "warm"
