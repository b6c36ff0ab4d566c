package peer

import (
	"context"
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	libp2ppeer "github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/shoal-mesh/shoal/crdt"
	"github.com/shoal-mesh/shoal/store"
	"github.com/shoal-mesh/shoal/store/artifacts"
)

// Response headers of the consistency promises (design §2).
const (
	HeaderStaleness = "Shoal-Staleness"
)

// MaxBodyBytes bounds request bodies unless a route sets its own limit.
const MaxBodyBytes = 1 << 20

// Status is the JSON of GET /v1/status and of `shoal status --json`.
type Status struct {
	PeerID           string          `json:"peer_id"`
	Addrs            []string        `json:"addrs"`
	Mesh             string          `json:"mesh"`
	Version          string          `json:"version"`
	StartedAt        time.Time       `json:"started_at"`
	StalenessSeconds float64         `json:"staleness_seconds"`
	Peers            []PeerInfo      `json:"peers"`
	Connected        int             `json:"connected"`
	Heads            []string        `json:"heads"`
	Height           uint64          `json:"height"`
	QueuedJobs       int             `json:"queued_jobs"`
	StateHash        string          `json:"state_hash"`
	Runtime          RuntimeStatus   `json:"runtime"`
	Inference        InferenceStatus `json:"inference"`
	Models           []ModelSummary  `json:"models"`
	// Progress lists long operations under way: artifact pulls and
	// retrieval index builds.
	Progress []Progress `json:"progress"`
}

// Progress is one long operation in Status.
type Progress struct {
	Kind      string    `json:"kind"` // "artifact_pull" or "index_build"
	Name      string    `json:"name"` // model@version or collection
	Done      int64     `json:"done"` // bytes or documents
	Total     int64     `json:"total"`
	Unit      string    `json:"unit"` // "bytes" or "documents"
	UpdatedAt time.Time `json:"updated_at,omitzero"`
}

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
}

// RuntimeStatus says whether onnxruntime is available.
type RuntimeStatus struct {
	ONNXRuntime string `json:"onnxruntime,omitempty"`
	Device      string `json:"device,omitempty"`
	Library     string `json:"library,omitempty"`
	Error       string `json:"error,omitempty"`
}

// Status gathers the peer's status.
func (n *Node) Status(ctx context.Context) (Status, error) {
	st := n.replica.Stats(ctx)
	hash, err := n.replica.StateHash(ctx)
	if err != nil {
		return Status{}, err
	}
	stale := n.replica.Staleness()
	s := Status{
		PeerID: n.host.ID().String(), Addrs: n.Addrs(), Mesh: n.cfg.Mesh, Version: n.cfg.Version,
		StartedAt: n.started.UTC(), StalenessSeconds: stale.Seconds,
		Connected: len(n.host.Network().Peers()), Height: st.Height, QueuedJobs: st.QueuedJobs,
		StateHash: hash, Heads: []string{}, Peers: []PeerInfo{},
	}
	for _, h := range st.Heads {
		s.Heads = append(s.Heads, h.String())
	}
	for _, p := range stale.Peers {
		pi := PeerInfo{ID: p.ID, LastHeard: p.LastHeard.UTC(), Reachable: p.Reachable, FreshUpTo: p.FreshUpTo.UTC(),
			LagSeconds: p.LagSeconds, Height: p.Height}
		if id, err := libp2ppeer.Decode(p.ID); err == nil {
			pi.Connected = n.host.Network().Connectedness(id) == network.Connected
		}
		s.Peers = append(s.Peers, pi)
	}
	s.Models = []ModelSummary{}
	if all, err := n.registry.Models(ctx); err == nil {
		for _, st := range all {
			mi := n.modelInfo(ctx, st)
			ms := ModelSummary{Name: mi.Name}
			if mi.Current != nil {
				ms.Current = mi.Current.Version
			}
			if mi.Serving != nil {
				ms.Serving, ms.LagSeconds = mi.Serving.Version, mi.Serving.LagSeconds
			}
			for _, v := range mi.Versions {
				switch {
				case v.Local == nil:
				case v.Local.State == artifacts.StateVerified && v.LoadError == "":
					ms.Local++
				case v.Local.State == artifacts.StateBad, v.LoadError != "":
					ms.Bad++
				}
			}
			s.Models = append(s.Models, ms)
		}
	}
	s.Progress = n.progress(ctx)
	s.Inference = n.inferenceStatus()
	s.Runtime = RuntimeStatus{ONNXRuntime: s.Inference.ONNXRuntime, Library: s.Inference.Library, Device: s.Inference.Device, Error: s.Inference.Error}
	return s, nil
}

// progress lists the artifact pulls and index builds under way.
func (n *Node) progress(ctx context.Context) []Progress {
	out := []Progress{}
	seen := map[string]int{}
	if all, err := n.artifacts.All(ctx); err == nil {
		for _, a := range all {
			if a.State != artifacts.StateFetching {
				continue
			}
			p := Progress{Kind: "artifact_pull", Name: a.Ref, Done: a.Fetched, Total: a.Size, Unit: "bytes", UpdatedAt: a.UpdatedAt}
			if i, ok := seen[a.Ref]; ok {
				out[i] = p // the live entry comes last
				continue
			}
			seen[a.Ref] = len(out)
			out = append(out, p)
		}
	}
	if n.rag != nil {
		for _, b := range n.rag.m.Building() {
			out = append(out, Progress{Kind: "index_build", Name: b.Collection, Done: b.Done, Total: b.Total, Unit: "documents", UpdatedAt: time.Now().UTC()})
		}
	}
	return out
}

func (n *Node) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", n.handleStatusPage)
	mux.HandleFunc("GET /healthz", n.handleHealth)
	mux.Handle("GET /metrics", promhttp.HandlerFor(n.reg, promhttp.HandlerOpts{Registry: n.reg}))
	mux.HandleFunc("GET /v1/status", n.handleStatus)
	mux.HandleFunc("GET /v1/models", n.handleModels)
	mux.HandleFunc("GET /v1/models/{model}", n.handleModel)
	mux.HandleFunc("PUT /v1/models/{model}/versions/{version}", n.handlePush)
	mux.HandleFunc("POST /v1/models/{model}/activate", n.handleActivate)
	mux.HandleFunc("POST /v1/models/{model}/rollback", n.handleRollback)
	mux.HandleFunc("POST /v1/models/{model}/versions/{version}/pull", n.handlePull)
	mux.HandleFunc("GET /v1/models/{model}/artifact", n.handleArtifact)
	mux.HandleFunc("GET /v1/models/{model}/versions/{version}/artifact", n.handleArtifact)
	mux.HandleFunc("POST /v1/cache/flush", n.handleCacheFlush)
	n.routesV2(mux)
	n.routesRAG(mux)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path))
	})
	return n.middleware(mux)
}

// statusPage is the read-only page at /: one self-contained file (no
// external assets, so it works on an air-gapped gateway) that polls
// /v1/status, /v1/collections and /metrics.
//
//go:embed status.html
var statusPage []byte

func (n *Node) handleStatusPage(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'")
	h.Set("Cache-Control", "no-cache")
	w.Write(statusPage)
}

func (n *Node) handleHealth(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "peer_id": n.host.ID().String()})
}

func (n *Node) handleStatus(w http.ResponseWriter, r *http.Request) {
	s, err := n.Status(r.Context())
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, s)
}

// middleware applies to every route: panics become a logged 500 JSON
// error, bodies are size-limited, the staleness header is set, and the
// request is counted.
func (n *Node) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				n.log.Error("panic in API handler", "path", r.URL.Path, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
				if !rec.wrote {
					writeError(rec, http.StatusInternalServerError, "internal error")
				}
			}
			route := r.Pattern
			if route == "" {
				route = "unmatched"
			}
			n.metrics.observe(route, rec.code, time.Since(start))
		}()
		limit := int64(MaxBodyBytes)
		switch {
		case r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/v1/models/"):
			limit = MaxArtifactBytes
		case r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, "/v2/models/"):
			limit = MaxInferBodyBytes
		case strings.HasPrefix(r.URL.Path, "/v1/collections/") && r.Method != http.MethodGet:
			limit = MaxRAGBody
		}
		r.Body = http.MaxBytesReader(rec, r.Body, limit)
		if n.token() != "" && isWrite(r) && !n.authorized(r) {
			rec.Header().Set("WWW-Authenticate", `Bearer realm="shoal"`)
			writeError(rec, http.StatusUnauthorized, "this request changes state: it needs Authorization: Bearer <API token>")
			return
		}
		rec.Header().Set(HeaderStaleness, FormatStaleness(n.replica.Staleness()))
		if isWrite(r) {
			if err := n.store.CheckSpace(r.ContentLength); err != nil {
				n.log.Warn("write refused", "path", r.URL.Path, "err", err)
				code := http.StatusInsufficientStorage
				if !errors.Is(err, store.ErrDiskFull) {
					code = http.StatusInternalServerError
				}
				writeError(rec, code, err.Error())
				return
			}
		}
		next.ServeHTTP(rec, r)
	})
}

// isWrite tells state-changing requests from reads. Inference, queries and
// embeddings are POSTs that change nothing, so they are reads.
func isWrite(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return false
	case http.MethodPost:
		p := r.URL.Path
		return !(strings.HasPrefix(p, "/v2/") || p == "/v1/embeddings" || strings.HasSuffix(p, "/query"))
	}
	return true
}

func (n *Node) authorized(r *http.Request) bool {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(tok), []byte(n.token())) == 1
}

// FormatStaleness renders a staleness as the Shoal-Staleness header value
// (seconds, e.g. "0.412s").
func FormatStaleness(s crdt.Staleness) string {
	return strconv.FormatFloat(s.Seconds, 'f', 3, 64) + "s"
}

type statusRecorder struct {
	http.ResponseWriter
	code  int
	wrote bool
}

func (s *statusRecorder) WriteHeader(code int) {
	if !s.wrote {
		s.code, s.wrote = code, true
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	s.wrote = true
	return s.ResponseWriter.Write(b)
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// writeError writes the API's error shape: {"error": "..."}.
func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}
