// Package httpapi is a Shoal peer's HTTP API: the routes, the middleware
// every request goes through (panics, body limits, the API token, the
// staleness header, the disk reserve, request metrics), the consistency
// demands of reads (Shoal-Timeout, Shoal-After, Shoal-Max-Staleness), and
// the one table that maps every error to its status and stable code
// (errors.go).
//
// Handlers are written against the small interfaces in deps.go, so each
// is tested with fakes, without a mesh; peer.New assembles the real ones.
// The wire types live in package api, which clients import.
package httpapi

import (
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/crdt"
)

// Config assembles the API. Every component may be nil in tests that do
// not reach its routes.
type Config struct {
	Peer        Peer
	Consistency Consistency
	Models      Models
	Inference   Inference
	Flusher     CacheFlusher
	Retrieval   Retrieval
	// Sessions serves /v1/sessions; nil: not served (404).
	Sessions Sessions
	Disk     Disk
	// Token returns the API token state-changing requests must carry
	// ("" when none is needed); it may change at run time (SIGHUP).
	Token func() string
	// Metrics serves /metrics.
	Metrics http.Handler
	// Version is this peer's build, for OIP v2 server metadata.
	Version string
	Logger  *slog.Logger
}

// API is the HTTP API of one peer.
type API struct {
	cfg      Config
	log      *slog.Logger
	handler  http.Handler
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	// artifactBytesOut counts artifact bytes served over the API.
	artifactBytesOut atomic.Uint64
	// keepalive is how often an idle watch stream sends a comment
	// (keepaliveEvery; tests shorten it).
	keepalive time.Duration
	// streamsEnd is closed by EndStreams: every watch stream ends.
	streamsEnd chan struct{}
	endStreams sync.Once
}

// New builds the API's handler.
func New(cfg Config) *API {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Token == nil {
		cfg.Token = func() string { return "" }
	}
	a := &API{cfg: cfg, log: cfg.Logger, keepalive: keepaliveEvery, streamsEnd: make(chan struct{}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_http_requests_total", Help: "HTTP API requests by route and status code.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "shoal_http_request_duration_seconds", Help: "HTTP API request latency by route.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"route"}),
	}
	a.handler = a.middleware(a.routes())
	return a
}

// Handler serves the API.
func (a *API) Handler() http.Handler { return a.handler }

// ArtifactBytesSent is the artifact bytes this API has served.
func (a *API) ArtifactBytesSent() uint64 { return a.artifactBytesOut.Load() }

// Collectors are the API's metrics, for the peer's registry.
func (a *API) Collectors() []prometheus.Collector {
	return []prometheus.Collector{a.requests, a.duration}
}

func (a *API) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", a.handleStatusPage)
	mux.HandleFunc("GET /healthz", a.handleHealth)
	if a.cfg.Metrics != nil {
		mux.Handle("GET /metrics", a.cfg.Metrics)
	}
	mux.HandleFunc("GET /v1/status", a.handleStatus)
	a.routesModels(mux)
	a.routesV2(mux)
	a.routesRetrieval(mux)
	a.routesSessions(mux)
	mux.HandleFunc("POST /v1/cache/flush", a.handleCacheFlush)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, fmt.Errorf("%w: %s %s", errNoRoute, r.Method, r.URL.Path))
	})
	return mux
}

// statusPage is the read-only page at /: one self-contained file (no
// external assets, so it works on an air-gapped gateway) that polls
// /v1/status, /v1/collections and /metrics.
//
//go:embed status.html
var statusPage []byte

func (a *API) handleStatusPage(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'")
	h.Set("Cache-Control", "no-cache")
	w.Write(statusPage)
}

func (a *API) handleHealth(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "peer_id": a.cfg.Peer.ID()})
}

func (a *API) handleStatus(w http.ResponseWriter, r *http.Request) {
	s, err := a.cfg.Peer.Status(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s)
}

// bodyLimit is the body size a route takes.
func bodyLimit(r *http.Request) int64 {
	switch p := r.URL.Path; {
	case r.Method == http.MethodPut && strings.HasPrefix(p, "/v1/models/"):
		return api.MaxArtifactBytes
	case r.Method == http.MethodPost && strings.HasPrefix(p, "/v2/models/"):
		return api.MaxInferBodyBytes
	case strings.HasPrefix(p, "/v1/collections/") && r.Method != http.MethodGet:
		return api.MaxRAGBody
	case isSessionPath(p):
		return maxSessionBody
	}
	return api.MaxBodyBytes
}

// middleware applies to every route: panics become a logged 500 JSON
// error, bodies are size-limited, writes need the token and free disk,
// the staleness header is set, and the request is counted.
func (a *API) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		defer a.finish(rec, r, start)
		r.Body = http.MaxBytesReader(rec, r.Body, bodyLimit(r))
		if a.cfg.Consistency != nil {
			rec.Header().Set(api.HeaderStaleness, FormatStaleness(a.cfg.Consistency.Staleness()))
		}
		if a.cfg.Token() != "" && (isWrite(r) || isSessionPath(r.URL.Path)) && !a.authorized(r) {
			rec.Header().Set("WWW-Authenticate", `Bearer realm="shoal"`)
			writeError(rec, errUnauthorized)
			return
		}
		if isWrite(r) && a.cfg.Disk != nil {
			if err := a.cfg.Disk.CheckSpace(r.ContentLength); err != nil {
				a.log.Warn("write refused", "path", r.URL.Path, "err", err)
				writeError(rec, err)
				return
			}
		}
		if isWrite(r) {
			if err := a.writeDemands(rec, r); err != nil {
				writeError(rec, err)
				return
			}
		}
		next.ServeHTTP(rec, r)
	})
}

// writeDemands applies a write's consistency demands before it is read:
// a write that builds on another peer's write (a document into a
// collection created there, activating a version pushed there) carries
// that write's Shoal-After token and waits for it, as a read does, rather
// than failing as unknown where the write has not arrived yet. A write
// bounded by Shoal-Max-Staleness is refused (or flagged) like a read.
// The handler then runs with its own deadline: the wait is bounded by
// Shoal-Timeout alone.
func (a *API) writeDemands(w http.ResponseWriter, r *http.Request) error {
	if a.cfg.Consistency == nil || isSessionPath(r.URL.Path) || r.Header.Get(api.HeaderAfter) == "" && r.Header.Get(api.HeaderMaxStaleness) == "" {
		return nil
	}
	_, cancel, err := a.consistent(w, r)
	if err != nil {
		return err
	}
	cancel()
	return nil
}

// finish recovers a panic into a 500 and counts the request.
func (a *API) finish(rec *statusWriter, r *http.Request, start time.Time) {
	if v := recover(); v != nil {
		if v == http.ErrAbortHandler {
			panic(v)
		}
		a.log.Error("panic in API handler", "path", r.URL.Path, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
		if !rec.wrote {
			writeError(rec, errPanic)
		}
	}
	route := r.Pattern
	if route == "" {
		route = "unmatched"
	}
	a.requests.WithLabelValues(route, strconv.Itoa(rec.code)).Inc()
	a.duration.WithLabelValues(route).Observe(time.Since(start).Seconds())
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

func (a *API) authorized(r *http.Request) bool {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(tok), []byte(a.cfg.Token())) == 1
}

// FormatStaleness renders a staleness as the Shoal-Staleness header value
// (seconds, e.g. "0.412s").
func FormatStaleness(s crdt.Staleness) string {
	return strconv.FormatFloat(s.Seconds, 'f', 3, 64) + "s"
}

// statusWriter remembers the status a handler wrote, for the metrics and
// for the panic handler (which must not write a second status).
type statusWriter struct {
	http.ResponseWriter
	code  int
	wrote bool
}

func (s *statusWriter) WriteHeader(code int) {
	if !s.wrote {
		s.code, s.wrote = code, true
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	s.wrote = true
	return s.ResponseWriter.Write(b)
}

func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// writeResult answers a write with its read-your-writes token, in the
// Shoal-Token header and as the body's "token".
func writeResult(w http.ResponseWriter, code int, wr crdt.Write, body map[string]any) {
	tok := wr.Token()
	w.Header().Set(api.HeaderToken, tok)
	body["token"] = tok
	writeJSON(w, code, body)
}
