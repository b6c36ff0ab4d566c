package peer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/shoal-mesh/shoal/crdt"
	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/inference"
	"github.com/shoal-mesh/shoal/inference/resultcache"
)

// MaxInferBodyBytes bounds an inference request body (JSON tensors are
// verbose: a 640×640 RGB image is about 12 MB of JSON).
const MaxInferBodyBytes = 64 << 20

// Result-cache header values.
const (
	HeaderCache = "Shoal-Cache"
	CacheHit    = "hit"
	CacheMiss   = "miss"
	CacheBypass = "bypass" // the model opted out, or the cache is off
)

// inferenceState is the peer's inference side: the engine (nil when
// onnxruntime is unavailable), the loaded sessions and the result cache.
type inferenceState struct {
	engine *inference.Engine
	err    error // why engine is nil
	pool   *inference.Pool
	cache  *resultcache.Cache // nil when off
	loads  singleflight.Group

	mu  sync.Mutex
	bad map[string]string // model@version → why it does not load here
	// manifests of loaded sessions by CID: requests to a loaded version
	// need no registry read.
	manifests map[string]models.Manifest

	// slots bounds the inferences running at once (Config.MaxInflight);
	// nil when unbounded. running counts them either way.
	slots   chan struct{}
	running atomic.Int64

	stats inferenceStats
}

// inferenceStats are counters the metrics collector reads.
type inferenceStats struct {
	mu           sync.Mutex
	requests     map[[3]string]uint64 // model, version, outcome
	cache        map[[3]string]uint64 // model, version, hit|miss|cold_miss
	loadFailures map[string]uint64    // model
	forwarded    map[[2]string]uint64 // direction, outcome (warm routing)
	saturated    map[string]uint64    // outcome: waited|forwarded|refused
}

func (s *inferenceStats) addForward(direction, outcome string) {
	s.mu.Lock()
	s.forwarded[[2]string{direction, outcome}]++
	s.mu.Unlock()
}

func (s *inferenceStats) addSaturated(outcome string) {
	s.mu.Lock()
	s.saturated[outcome]++
	s.mu.Unlock()
}

func (s *inferenceStats) add(m map[[3]string]uint64, k [3]string) {
	s.mu.Lock()
	m[k]++
	s.mu.Unlock()
}

func (n *Node) initInference() error {
	n.inf = &inferenceState{pool: inference.NewPool(), bad: map[string]string{}, manifests: map[string]models.Manifest{}}
	n.inf.stats = inferenceStats{requests: map[[3]string]uint64{}, cache: map[[3]string]uint64{},
		loadFailures: map[string]uint64{}, forwarded: map[[2]string]uint64{}, saturated: map[string]uint64{}}
	if n.cfg.MaxInflight > 0 {
		n.inf.slots = make(chan struct{}, n.cfg.MaxInflight)
	}
	e, err := inference.Open(inference.Config{Library: n.cfg.ORTLibrary, Device: n.cfg.Device,
		IntraOpThreads: n.cfg.IntraOpThreads, Logger: n.log})
	if err != nil {
		if errors.Is(err, inference.ErrNoCUDA) {
			return fmt.Errorf("%w: --device cuda: %v", ErrBadConfig, err)
		}
		n.inf.err = err
		n.log.Warn("onnxruntime unavailable: inference disabled", "err", err)
	} else {
		n.inf.engine = e
		n.ortVersion = e.Version()
	}
	if n.cfg.CacheBytes > 0 {
		cc := resultcache.Config{MaxBytes: n.cfg.CacheBytes, TTL: n.cfg.CacheTTL}
		if n.cfg.CachePersist {
			cc.Store = n.store.Datastore()
		}
		n.inf.cache = resultcache.New(cc)
	}
	return nil
}

func (n *Node) closeInference() {
	if n.inf == nil {
		return
	}
	n.inf.pool.Close()
	if n.inf.engine != nil {
		n.inf.engine.Close()
	}
}

// loadSession creates and warms up a session for a verified ONNX
// artifact. A failure is remembered as the version's reason for not being
// served here.
func (n *Node) loadSession(ctx context.Context, m models.Manifest) (*inference.Session, error) {
	if n.inf.engine == nil {
		return nil, fmt.Errorf("inference unavailable: %v", n.inf.err)
	}
	v, err, _ := n.inf.loads.Do(m.Ref(), func() (any, error) {
		spec, err := specOf(m)
		if err != nil {
			return nil, err
		}
		rd, err := n.artifacts.Open(ctx, spec)
		if err != nil {
			return nil, err
		}
		data, err := io.ReadAll(rd)
		rd.Close()
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", m.Ref(), err)
		}
		var warm *inference.InferRequest
		if len(m.Warmup) > 0 {
			warm = &inference.InferRequest{}
			if err := json.Unmarshal(m.Warmup, warm); err != nil {
				return nil, n.markBad(m, fmt.Errorf("%w: %s: the manifest's warm-up request is not OIP v2 JSON: %v", inference.ErrWarmup, m.Ref(), err))
			}
		}
		n.inf.mu.Lock()
		n.inf.manifests[m.CID] = m
		n.inf.mu.Unlock()
		s, err := n.inf.engine.Load(ctx, inference.Ref{Model: m.Model, Version: m.Version, CID: m.CID}, data, warm)
		if err != nil {
			if errors.Is(err, inference.ErrLoad) || errors.Is(err, inference.ErrWarmup) {
				return nil, n.markBad(m, err)
			}
			return nil, err
		}
		return s, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*inference.Session), nil
}

func (n *Node) markBad(m models.Manifest, err error) error {
	n.inf.mu.Lock()
	n.inf.bad[m.Ref()] = err.Error()
	n.inf.mu.Unlock()
	n.inf.stats.mu.Lock()
	n.inf.stats.loadFailures[m.Model]++
	n.inf.stats.mu.Unlock()
	prev, _ := n.life.Serving(m.Model)
	n.log.Error("model version marked bad: not served here", "ref", m.Ref(), "reason", err.Error(), "still_serving", prev.Version)
	return err
}

// badReason says why model@version does not load here ("" if it does).
func (n *Node) badReason(ref string) string {
	if n.inf == nil {
		return ""
	}
	n.inf.mu.Lock()
	defer n.inf.mu.Unlock()
	return n.inf.bad[ref]
}

// session acquires the session that answers model[@version]. Pinned
// versions that are known but not loaded are fetched and loaded within the
// request's deadline; the caller must Release the session.
func (n *Node) session(ctx context.Context, model, version string) (*inference.Session, models.Manifest, error) {
	if n.inf.engine == nil {
		return nil, models.Manifest{}, &apiError{code: http.StatusServiceUnavailable,
			msg: fmt.Sprintf("inference is unavailable on this peer: %v", n.inf.err)}
	}
	// Fast path: the version is loaded (the usual case).
	if s, err := n.inf.pool.Acquire(model, version); err == nil {
		n.inf.mu.Lock()
		m, ok := n.inf.manifests[s.CID]
		n.inf.mu.Unlock()
		if ok {
			return s, m, nil
		}
		s.Release()
	}
	if version == "" {
		st, err := n.registry.State(ctx, model)
		if err != nil {
			return nil, models.Manifest{}, modelErr(err)
		}
		if s, err := n.inf.pool.Acquire(model, ""); err == nil {
			m, _ := st.Version(s.Version)
			return s, m.Manifest, nil
		}
		if st.Current != nil {
			if vs, ok := st.Version(st.Current.Version); ok && !vs.Manifest.IsONNX() {
				return nil, models.Manifest{}, &apiError{code: http.StatusBadRequest,
					msg: fmt.Sprintf("%s is a %s artifact, not an ONNX model (push it with media type %s to serve it)", vs.Manifest.Ref(), vs.Manifest.MediaType, models.MediaTypeONNX)}
			}
			if reason := n.badReason(model + "@" + st.Current.Version); reason != "" {
				return nil, models.Manifest{}, &apiError{code: http.StatusServiceUnavailable, retry: 5 * time.Second,
					msg: fmt.Sprintf("the current version %s@%s does not load on this peer (%s) and no earlier version is loaded", model, st.Current.Version, reason)}
			}
		}
		return nil, models.Manifest{}, &apiError{code: http.StatusServiceUnavailable, retry: 5 * time.Second,
			msg: fmt.Sprintf("no verified version of %s is loaded on this peer yet", model)}
	}
	m, err := n.registry.Manifest(ctx, model, version)
	if err != nil {
		return nil, m, modelErr(err)
	}
	if !m.IsONNX() {
		return nil, m, &apiError{code: http.StatusBadRequest,
			msg: fmt.Sprintf("%s is a %s artifact, not an ONNX model (push it with media type %s to serve it)", m.Ref(), m.MediaType, models.MediaTypeONNX)}
	}
	for {
		if s, err := n.inf.pool.Acquire(model, version); err == nil {
			return s, m, nil
		}
		if reason := n.badReason(m.Ref()); reason != "" {
			return nil, m, &apiError{code: http.StatusConflict, msg: fmt.Sprintf("%s does not load on this peer: %s", m.Ref(), reason)}
		}
		spec, err := specOf(m)
		if err != nil {
			return nil, m, modelErr(err)
		}
		if _, err := n.artifacts.Ensure(ctx, spec); err != nil {
			return nil, m, modelErr(err)
		}
		s, err := n.loadSession(ctx, m)
		if err != nil {
			if errors.Is(err, inference.ErrLoad) || errors.Is(err, inference.ErrWarmup) {
				return nil, m, &apiError{code: http.StatusConflict, msg: fmt.Sprintf("%s does not load on this peer: %v", m.Ref(), err)}
			}
			return nil, m, modelErr(err)
		}
		if n.inf.pool.Closed() {
			s.Retire()
			return nil, m, &apiError{code: http.StatusServiceUnavailable, retry: 5 * time.Second, msg: "the peer is shutting down"}
		}
		n.inf.pool.Add(s)
	}
}

// routesV2 are the Open Inference Protocol v2 endpoints.
func (n *Node) routesV2(mux *http.ServeMux) {
	mux.HandleFunc("GET /v2", n.handleServerMetadata)
	mux.HandleFunc("GET /v2/health/live", n.handleLive)
	mux.HandleFunc("GET /v2/health/ready", n.handleReady)
	mux.HandleFunc("GET /v2/models/{model}", n.handleModelMetadata)
	mux.HandleFunc("GET /v2/models/{model}/versions/{version}", n.handleModelMetadata)
	mux.HandleFunc("GET /v2/models/{model}/ready", n.handleModelReady)
	mux.HandleFunc("GET /v2/models/{model}/versions/{version}/ready", n.handleModelReady)
	mux.HandleFunc("POST /v2/models/{model}/infer", n.handleInfer)
	mux.HandleFunc("POST /v2/models/{model}/versions/{version}/infer", n.handleInfer)
}

func (n *Node) handleServerMetadata(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, inference.ServerMetadata{Name: "shoal", Version: n.cfg.Version,
		Extensions: []string{"shoal_consistency", "shoal_result_cache"}})
}

func (n *Node) handleLive(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]bool{"live": true})
}

// handleReady: the server is ready when inference works here and every
// ONNX model with a current version has a loaded session.
func (n *Node) handleReady(w http.ResponseWriter, r *http.Request) {
	ready, why := n.inferenceReady(r.Context())
	if !ready {
		w.Header().Set("Retry-After", "5")
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"ready": false, "error": why})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ready": true})
}

func (n *Node) inferenceReady(ctx context.Context) (bool, string) {
	if n.inf.engine == nil {
		return false, fmt.Sprintf("inference unavailable: %v", n.inf.err)
	}
	states, err := n.registry.Models(ctx)
	if err != nil {
		return false, err.Error()
	}
	var waiting []string
	for _, st := range states {
		if st.Current == nil {
			continue
		}
		vs, ok := st.Version(st.Current.Version)
		if !ok || !vs.Manifest.IsONNX() {
			continue
		}
		if _, ok := n.inf.pool.Current(st.Name); !ok {
			waiting = append(waiting, st.Name)
		}
	}
	if len(waiting) > 0 {
		return false, "no version loaded yet for " + strings.Join(waiting, ", ")
	}
	return true, ""
}

func (n *Node) handleModelMetadata(w http.ResponseWriter, r *http.Request) {
	ctx, cancel, err := n.consistent(w, r)
	if err != nil {
		writeAPIError(w, err)
		return
	}
	defer cancel()
	model, version := r.PathValue("model"), r.PathValue("version")
	s, _, err := n.session(ctx, model, version)
	if err != nil {
		writeAPIError(w, err)
		return
	}
	md := s.Metadata()
	s.Release()
	if st, err := n.registry.State(ctx, model); err == nil && version == "" {
		md.Versions = md.Versions[:0]
		for _, v := range st.Versions {
			md.Versions = append(md.Versions, v.Manifest.Version)
		}
	}
	w.Header().Set(HeaderModelVersion, s.Version)
	writeJSON(w, http.StatusOK, md)
}

func (n *Node) handleModelReady(w http.ResponseWriter, r *http.Request) {
	ctx, cancel, err := n.consistent(w, r)
	if err != nil {
		writeAPIError(w, err)
		return
	}
	defer cancel()
	model, version := r.PathValue("model"), r.PathValue("version")
	body := map[string]any{"name": model, "ready": false}
	if version != "" {
		if _, err := n.registry.Manifest(ctx, model, version); err != nil {
			writeAPIError(w, modelErr(err))
			return
		}
		body["version"] = version
		if n.inf.pool.Has(model, version) {
			body["ready"] = true
		} else if reason := n.badReason(model + "@" + version); reason != "" {
			body["error"] = reason
		}
	} else {
		if _, err := n.registry.State(ctx, model); err != nil {
			writeAPIError(w, modelErr(err))
			return
		}
		if ref, ok := n.inf.pool.Current(model); ok {
			body["ready"], body["version"] = true, ref.Version
			w.Header().Set(HeaderModelVersion, ref.Version)
		}
	}
	if body["ready"] != true {
		w.Header().Set("Retry-After", "5")
		writeJSON(w, http.StatusServiceUnavailable, body)
		return
	}
	writeJSON(w, http.StatusOK, body)
}

func (n *Node) handleInfer(w http.ResponseWriter, r *http.Request) {
	model, version := r.PathValue("model"), r.PathValue("version")
	outcome, servedVersion := "error", version
	defer func() {
		if servedVersion == "" {
			servedVersion = "-"
		}
		n.inf.stats.add(n.inf.stats.requests, [3]string{model, servedVersion, outcome})
	}()
	ctx, cancel, err := n.consistent(w, r)
	if err != nil {
		writeAPIError(w, err)
		return
	}
	defer cancel()
	// Request bodies are the bulk of an inference's garbage; they are
	// read into pooled buffers, sized by Content-Length when there is one.
	// Decoded inputs alias the buffer, so it goes back only once the
	// response is written.
	bufp := bodyPool.Get().(*[]byte)
	defer func() {
		if cap(*bufp) <= maxPooledBody {
			bodyPool.Put(bufp)
		}
	}()
	body, err := readBody(r, bufp)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			outcome = "bad_request"
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", mbe.Limit))
			return
		}
		writeError(w, http.StatusBadRequest, "reading the request: "+err.Error())
		return
	}
	headerLen := -1
	if v := r.Header.Get(inference.HeaderInferenceHeaderLength); v != "" {
		if headerLen, err = strconv.Atoi(v); err != nil || headerLen < 0 {
			outcome = "bad_request"
			writeError(w, http.StatusBadRequest, inference.HeaderInferenceHeaderLength+": not a byte count")
			return
		}
	}
	req, err := inference.ParseRequest(body, headerLen)
	if err != nil {
		outcome = "bad_request"
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if n.mayRoute(r, version) && !n.inf.pool.Has(model, version) {
		if pid, ok := n.warmPeer(model + "@" + version); ok {
			// Load it here too, for the requests that follow.
			n.wg.Add(1)
			go func() {
				defer n.wg.Done()
				lctx, cancel := context.WithTimeout(n.ctx, forwardTimeout)
				defer cancel()
				if s, _, err := n.session(lctx, model, version); err == nil {
					s.Release()
				}
			}()
			if n.forward(ctx, w, r, pid, body) {
				outcome = "forwarded"
				return
			}
		}
	}
	s, m, err := n.session(ctx, model, version)
	if err != nil {
		writeAPIError(w, err)
		return
	}
	defer s.Release()
	servedVersion = s.Version
	p, err := s.Prepare(req)
	if err != nil {
		outcome = "bad_request"
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	resp := inference.InferResponse{ModelName: model, ModelVersion: s.Version, ID: req.ID}
	h := w.Header()
	h.Set(HeaderModelVersion, s.Version)
	cache := n.inf.cache
	if m.NoCache {
		cache = nil
	}
	var key resultcache.Key
	if cache != nil {
		key = resultcache.KeyOf(s.CID, p.Canonical())
		if raw, ok := cache.Get(ctx, key, model); ok {
			var outs []inference.ResponseOutput
			if err := json.Unmarshal(raw, &outs); err == nil {
				n.inf.stats.add(n.inf.stats.cache, [3]string{model, s.Version, "hit"})
				resp.Outputs = outs
				outcome = "ok"
				h.Set(HeaderCache, CacheHit)
				writeInferResponse(w, resp, req)
				return
			}
		}
		result := "miss"
		if !cache.Seen(model, s.Version) {
			result = "cold_miss"
		}
		n.inf.stats.add(n.inf.stats.cache, [3]string{model, s.Version, result})
		h.Set(HeaderCache, CacheMiss)
	} else {
		h.Set(HeaderCache, CacheBypass)
	}
	release, answered, err := n.acquireSlot(ctx, w, r, model, version, body)
	if answered {
		outcome = "forwarded"
		return
	}
	if err != nil {
		outcome = "busy"
		writeAPIError(w, err)
		return
	}
	outs, err := n.runInference(ctx, s, p, release)
	if err != nil {
		switch {
		case errors.Is(err, inference.ErrBadRequest):
			outcome = "bad_request"
			writeError(w, http.StatusBadRequest, err.Error())
		case ctx.Err() != nil:
			outcome = "timeout"
			writeAPIError(w, &apiError{code: http.StatusGatewayTimeout, msg: "inference did not finish within the request's deadline"})
		default:
			// onnxruntime refused inputs that fit the declared shapes
			// (a model with stricter internal constraints): the caller's
			// to fix, and the peer keeps serving.
			outcome = "bad_request"
			writeError(w, http.StatusBadRequest, err.Error())
		}
		return
	}
	resp.Outputs = outs
	if cache != nil {
		if raw, err := json.Marshal(outs); err == nil {
			cache.Put(ctx, key, model, s.Version, raw)
		}
	}
	outcome = "ok"
	writeInferResponse(w, resp, req)
}

var bodyPool = sync.Pool{New: func() any { b := make([]byte, 0, 64<<10); return &b }}

// maxPooledBody keeps rare huge buffers out of the pool.
const maxPooledBody = 8 << 20

func readBody(r *http.Request, bufp *[]byte) ([]byte, error) {
	buf := (*bufp)[:0]
	if n := r.ContentLength; n > 0 && n <= MaxInferBodyBytes && int64(cap(buf)) < n+1 {
		buf = make([]byte, 0, n+1)
	}
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		m, err := r.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+m]
		if err == io.EOF {
			*bufp = buf
			return buf, nil
		}
		if err != nil {
			*bufp = buf
			return nil, err
		}
	}
}

// writeInferResponse writes JSON, or JSON plus binary outputs when the
// request asked for them (binary tensor data extension).
func writeInferResponse(w http.ResponseWriter, resp inference.InferResponse, req *inference.InferRequest) {
	body, headerLen, err := inference.EncodeResponse(resp, req)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	h := w.Header()
	if headerLen >= 0 {
		h.Set("Content-Type", "application/octet-stream")
		h.Set(inference.HeaderInferenceHeaderLength, strconv.Itoa(headerLen))
	} else {
		h.Set("Content-Type", "application/json")
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	w.Write(body)
}

// Cache flushes are replicated records (design §1): every peer drops its
// cached results of the scope older than the flush's HLC.

// CacheFlushAll is the scope of a flush of every model.
const CacheFlushAll = "_all"

const kindCacheFlush = "cache.flush"

// CacheFlush is the record at /shoal/cache/<scope>/flush.
type CacheFlush struct {
	Scope string   `json:"scope"`
	HLC   crdt.HLC `json:"hlc"`
}

func cacheFlushKey(scope string) string { return "/shoal/cache/" + scope + "/flush" }

// FlushCache replicates a flush of model's cached results ("" for all).
func (n *Node) FlushCache(ctx context.Context, model string) (CacheFlush, crdt.Write, error) {
	scope := CacheFlushAll
	if model != "" {
		if err := models.CheckName("model", model); err != nil {
			return CacheFlush{}, crdt.Write{}, err
		}
		scope = model
	}
	f := CacheFlush{Scope: scope, HLC: n.replica.Clock().Now()}
	wr, err := n.replica.Put(ctx, cacheFlushKey(scope), kindCacheFlush, f)
	if err == nil {
		n.applyFlush(f)
	}
	return f, wr, err
}

func (n *Node) applyFlush(f CacheFlush) {
	if n.inf == nil || n.inf.cache == nil {
		return
	}
	model := f.Scope
	if model == CacheFlushAll {
		model = ""
	}
	n.inf.cache.Flush(model, time.Unix(0, f.HLC.Wall))
}

// followFlushes applies flush records already in the state, then the
// ones that arrive.
func (n *Node) followFlushes(ctx context.Context, sub *crdt.Subscription) {
	defer sub.Close()
	if entries, err := n.replica.List(ctx, "/shoal/cache"); err == nil {
		for _, e := range entries {
			var f CacheFlush
			if e.Record.Kind == kindCacheFlush && e.Record.DecodeBody(&f) == nil {
				n.applyFlush(f)
			}
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-sub.Done():
			return
		case ev := <-sub.C():
			var f CacheFlush
			if ev.Type == crdt.EventPut && ev.Record.Kind == kindCacheFlush && ev.Record.DecodeBody(&f) == nil {
				n.log.Info("result cache flushed", "scope", f.Scope, "hlc", f.HLC.String())
				n.applyFlush(f)
			}
		}
	}
}

func (n *Node) handleCacheFlush(w http.ResponseWriter, r *http.Request) {
	model := r.URL.Query().Get("model")
	f, wr, err := n.FlushCache(r.Context(), model)
	if err != nil {
		writeAPIError(w, modelErr(err))
		return
	}
	writeResult(w, http.StatusOK, wr, map[string]any{"flush": f})
}

// InferenceStatus is the inference part of /v1/status.
type InferenceStatus struct {
	Available   bool                      `json:"available"`
	Error       string                    `json:"error,omitempty"`
	ONNXRuntime string                    `json:"onnxruntime,omitempty"`
	Library     string                    `json:"library,omitempty"`
	Device      string                    `json:"device,omitempty"`
	WhyNotCUDA  string                    `json:"why_not_cuda,omitempty"`
	Loaded      []inference.LoadedSession `json:"loaded"`
	Bad         map[string]string         `json:"bad,omitempty"`
	Cache       *resultcache.Stats        `json:"cache,omitempty"`
	// Running inferences now, against Slots (--max-inflight; 0 unbounded).
	Running int64 `json:"running"`
	Slots   int   `json:"slots"`
}

func (n *Node) inferenceStatus() InferenceStatus {
	st := InferenceStatus{Loaded: n.inf.pool.Loaded(), Running: n.inf.running.Load(), Slots: cap(n.inf.slots)}
	if st.Loaded == nil {
		st.Loaded = []inference.LoadedSession{}
	}
	if e := n.inf.engine; e != nil {
		st.Available, st.ONNXRuntime, st.Library, st.Device, st.WhyNotCUDA = true, e.Version(), e.Library(), e.Device(), e.DeviceReason()
	} else if n.inf.err != nil {
		st.Error = n.inf.err.Error()
	}
	n.inf.mu.Lock()
	if len(n.inf.bad) > 0 {
		st.Bad = map[string]string{}
		for k, v := range n.inf.bad {
			st.Bad[k] = v
		}
	}
	n.inf.mu.Unlock()
	if n.inf.cache != nil {
		cs := n.inf.cache.Stats()
		st.Cache = &cs
	}
	return st
}

// runInference runs p on s holding an inference slot, which it releases
// as soon as the run ends (not when the response is written).
func (n *Node) runInference(ctx context.Context, s *inference.Session, p *inference.Prepared, release func()) ([]inference.ResponseOutput, error) {
	defer release()
	n.inf.running.Add(1)
	defer n.inf.running.Add(-1)
	start := time.Now()
	defer func() { n.metrics.inferSeconds.WithLabelValues(s.Model).Observe(time.Since(start).Seconds()) }()
	return s.Run(ctx, p)
}

// mayRoute reports whether r may be forwarded to a warm peer: this peer
// and the request opted in, the request is pinned, and it did not arrive
// over the routing stream itself.
func (n *Node) mayRoute(r *http.Request, version string) bool {
	return version != "" && n.cfg.WarmRouting && r.Header.Get(HeaderRoute) == "warm" && r.Header.Get(headerForwardedBy) == ""
}

// acquireSlot takes one of this peer's inference slots (Config.MaxInflight)
// for r; call release once the inference ran. When every slot is taken, a
// request that may be routed goes to a warm peer (answered: the response
// is written), a request forwarded here is refused at once (its origin
// then serves it), and any other waits for a slot within its deadline.
func (n *Node) acquireSlot(ctx context.Context, w http.ResponseWriter, r *http.Request, model, version string, body []byte) (release func(), answered bool, err error) {
	slots := n.inf.slots
	if slots == nil {
		return func() {}, false, nil
	}
	release = func() { <-slots }
	select {
	case slots <- struct{}{}:
		return release, false, nil
	default:
	}
	busy := &apiError{code: http.StatusServiceUnavailable, retry: time.Second,
		msg: fmt.Sprintf("no inference slot free on this peer (%d in flight, --max-inflight)", cap(slots))}
	if n.mayRoute(r, version) {
		if pid, ok := n.warmPeer(model + "@" + version); ok {
			// The headers set for a local answer give way to the warm
			// peer's, and come back if this peer serves after all.
			h := w.Header()
			hCache, hVersion := h.Get(HeaderCache), h.Get(HeaderModelVersion)
			h.Del(HeaderCache)
			h.Del(HeaderModelVersion)
			if n.forward(ctx, w, r, pid, body) {
				n.inf.stats.addSaturated("forwarded")
				return nil, true, nil
			}
			h.Set(HeaderCache, hCache)
			h.Set(HeaderModelVersion, hVersion)
		}
	} else if r.Header.Get(headerForwardedBy) != "" {
		n.inf.stats.addSaturated("refused")
		return nil, false, busy
	}
	select {
	case slots <- struct{}{}:
		n.inf.stats.addSaturated("waited")
		return release, false, nil
	case <-ctx.Done():
		n.inf.stats.addSaturated("refused")
		busy.msg = fmt.Sprintf("no inference slot came free within the request's deadline (%d in flight, --max-inflight)", cap(slots))
		return nil, false, busy
	}
}
