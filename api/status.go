package api

import "time"

// Status is the JSON of GET /v1/status and of `shoal status --json`.
type Status struct {
	PeerID string   `json:"peer_id"`
	Addrs  []string `json:"addrs"`
	// GRPCAddr is where the peer serves OIP v2 over gRPC; empty when off.
	GRPCAddr         string     `json:"grpc_addr,omitempty"`
	Mesh             string     `json:"mesh"`
	Version          string     `json:"version"`
	StartedAt        time.Time  `json:"started_at"`
	StalenessSeconds float64    `json:"staleness_seconds"`
	Peers            []PeerInfo `json:"peers"`
	Connected        int        `json:"connected"`
	Heads            []string   `json:"heads"`
	Height           uint64     `json:"height"`
	QueuedJobs       int        `json:"queued_jobs"`
	StateHash        string     `json:"state_hash"`
	// StateDigest is the digest of the state at Heads that this peer's
	// heartbeats carry (empty while a merge is under way); Diverged lists
	// the peers whose heads equal this peer's while their states differ.
	StateDigest string          `json:"state_digest,omitempty"`
	Diverged    []string        `json:"diverged"`
	Runtime     RuntimeStatus   `json:"runtime"`
	Inference   InferenceStatus `json:"inference"`
	Models      []ModelSummary  `json:"models"`
	// Progress lists long operations under way: artifact pulls and
	// retrieval index builds.
	Progress []Progress `json:"progress"`
}

// Progress is one long operation in Status.
type Progress struct {
	Kind      string    `json:"kind"` // ProgressArtifactPull or ProgressIndexBuild
	Name      string    `json:"name"` // model@version or collection
	Done      int64     `json:"done"` // bytes or documents
	Total     int64     `json:"total"`
	Unit      string    `json:"unit"` // "bytes" or "documents"
	UpdatedAt time.Time `json:"updated_at,omitzero"`
}

// Kinds of Progress.
const (
	ProgressArtifactPull = "artifact_pull"
	ProgressIndexBuild   = "index_build"
)

// ModelSummary is one model in Status.
type ModelSummary struct {
	Name       string  `json:"name"`
	Current    string  `json:"current,omitempty"`
	Serving    string  `json:"serving,omitempty"`
	LagSeconds float64 `json:"lag_seconds,omitempty"`
	Local      int     `json:"local_versions"`
	Bad        int     `json:"bad_versions"`
}

// PeerInfo is one mesh peer in Status.
type PeerInfo struct {
	ID         string    `json:"id"`
	LastHeard  time.Time `json:"last_heard"`
	Reachable  bool      `json:"reachable"`
	Connected  bool      `json:"connected"`
	FreshUpTo  time.Time `json:"fresh_up_to,omitzero"`
	LagSeconds float64   `json:"lag_seconds"`
	Height     uint64    `json:"height"`
	// Heads and StateDigest are what the peer last announced; Agreement
	// compares them with this peer's: "agree" (same heads, same state),
	// "diverged" (same heads, different state) or "pending" (heads differ
	// or no digest yet).
	Heads       []string `json:"heads"`
	StateDigest string   `json:"state_digest,omitempty"`
	Agreement   string   `json:"agreement"`
}

// RuntimeStatus says whether onnxruntime is available.
type RuntimeStatus struct {
	ONNXRuntime string `json:"onnxruntime,omitempty"`
	Device      string `json:"device,omitempty"`
	Library     string `json:"library,omitempty"`
	Error       string `json:"error,omitempty"`
}

// InferenceStatus is the inference part of Status.
type InferenceStatus struct {
	Available   bool              `json:"available"`
	Error       string            `json:"error,omitempty"`
	ONNXRuntime string            `json:"onnxruntime,omitempty"`
	Library     string            `json:"library,omitempty"`
	Device      string            `json:"device,omitempty"`
	WhyNotCUDA  string            `json:"why_not_cuda,omitempty"`
	Loaded      []LoadedSession   `json:"loaded"`
	Bad         map[string]string `json:"bad,omitempty"`
	Cache       *CacheStats       `json:"cache,omitempty"`
	// Running inferences now, against Slots (--max-inflight; 0 unbounded).
	Running int64 `json:"running"`
	Slots   int   `json:"slots"`
}

// LoadedSession is one onnxruntime session a peer holds.
type LoadedSession struct {
	Model   string `json:"model"`
	Version string `json:"version"`
	CID     string `json:"cid"`
	Current bool   `json:"current"`
	Device  string `json:"device"`
}

// CacheStats describes the result cache's memory tier.
type CacheStats struct {
	Entries     int    // entries in the memory tier
	Bytes       int64  // bytes charged to the memory tier
	Evictions   uint64 // memory entries evicted to stay under MaxBytes
	StoreHits   uint64 // lookups answered by the Badger tier
	StoreErrors uint64 // failed store operations and undecodable store values
}
