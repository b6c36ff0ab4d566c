// Package serving answers inference requests on a peer: parse the OIP v2
// request, acquire the version's session, answer from the result cache
// when it can, admit the run into one of the peer's inference slots, run
// it (alone, or joined with others for versions that ask for dynamic
// batching, batch.go), record it — and, for pinned requests that opt in,
// route them to a warm peer that has the version loaded (routing.go).
//
// Its surface is Server.Infer(ctx, Call): the HTTP API turns a request
// into a Call and writes the Answer; nothing here knows of HTTP routes or
// of how sessions are loaded (Sessions is the lifecycle, behind an
// interface defined here).
package serving

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/inference"
	"github.com/shoal-mesh/shoal/inference/resultcache"
	"github.com/shoal-mesh/shoal/internal/errs"
)

// Errors of Infer besides the lifecycle's (model unknown, not loaded, …).
var (
	// ErrBadInput: the request does not fit the model (it wraps the
	// parser's or onnxruntime's reason).
	ErrBadInput = errors.New("bad inference input")
	// ErrBusy: no inference slot came free within the deadline.
	ErrBusy = errors.New("no inference slot free")
	// ErrTimeout: the run did not finish within the deadline.
	ErrTimeout = errors.New("inference did not finish within the request's deadline")
)

// Sessions acquires loaded sessions (the lifecycle implements it).
type Sessions interface {
	// Session returns model@version's session (the current one when
	// version is ""), loading a pinned version within ctx; Release it.
	Session(ctx context.Context, model, version string) (*inference.Session, models.Manifest, error)
	// Loaded reports whether model@version has a session loaded now.
	Loaded(model, version string) bool
}

// Config assembles a Server.
type Config struct {
	Sessions Sessions
	// Cache is the result cache; nil turns it off.
	Cache *resultcache.Cache
	// MaxInflight bounds the inferences run at once (0: unbounded).
	MaxInflight int
	// BatchRunners bounds the batches of one queue (one session, one
	// shape) that run at once, for versions with dynamic batching
	// (batch.go). Default 4.
	BatchRunners int
	// Router forwards pinned requests to warm peers; nil: never.
	Router *Router
	Logger *slog.Logger
}

// Call is one inference request.
type Call struct {
	Model, Version string // Version "" asks for the current version
	// Body is the OIP v2 request: JSON, or JSON then binary tensors when
	// HeaderLen ≥ 0 (the binary tensor data extension).
	Body      []byte
	HeaderLen int
	// Route: the caller opted in to warm routing (Shoal-Route: warm).
	Route bool
	// Forwarded: the call arrived from another peer's warm routing; it
	// is never forwarded again, and is refused at once when busy.
	Forwarded bool
	// Headers travel with a forwarded call (the consistency demands).
	Headers map[string]string
	// Request is the request already decoded, by an API with its own
	// wire form (gRPC); Body and HeaderLen are then unused and the call
	// is never routed (a warm peer answers in the HTTP wire form).
	Request *inference.InferRequest
	// Decoded asks for the answer as Answer.Response, not encoded into
	// Body (the gRPC API encodes it itself).
	Decoded bool
}

// Answer is what Infer answers.
type Answer struct {
	Status  int    // 200, or a warm peer's status
	Version string // the version that answered
	Cache   string // api.CacheHit, CacheMiss, CacheBypass; "" if unknown
	// RoutedTo is the warm peer that computed the answer, if any.
	RoutedTo    string
	ContentType string
	HeaderLen   int // ≥ 0: Body is JSON then binary outputs
	RetryAfter  string
	Body        []byte
	// Response is the answer, decoded, when the call asked for it.
	Response *inference.InferResponse
}

// Server serves inference on one peer.
type Server struct {
	cfg     Config
	log     *slog.Logger
	slots   chan struct{} // nil when unbounded
	running atomic.Int64
	m       metrics

	// Dynamic batching (batch.go). bmu is taken before a queue's mu.
	bmu     sync.Mutex
	queues  map[batchKey]*batchQueue
	noBatch map[string]bool // CIDs whose outputs did not split by rows
	// batchRunners is Config.BatchRunners, defaulted.
	batchRunners int
	// batchHook, when set (tests), is called as a batch is about to run,
	// on the runner's goroutine.
	batchHook func(*batch)

	ctx    context.Context // bounds background loads
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New returns a Server.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{cfg: cfg, log: cfg.Logger, m: newMetrics(), queues: map[batchKey]*batchQueue{}, noBatch: map[string]bool{}}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.batchRunners = cfg.BatchRunners
	if s.batchRunners <= 0 {
		s.batchRunners = defaultBatchRunners
	}
	if cfg.MaxInflight > 0 {
		s.slots = make(chan struct{}, cfg.MaxInflight)
	}
	if cfg.Router != nil {
		cfg.Router.metrics = &s.m
	}
	return s
}

// Close waits for background loads started by routed calls.
func (s *Server) Close() {
	s.cancel()
	s.wg.Wait()
}

// Running is the number of inferences running now; Slots their bound
// (0: unbounded).
func (s *Server) Running() int64 { return s.running.Load() }
func (s *Server) Slots() int     { return cap(s.slots) }

// Infer answers c. Errors wrap ErrBadInput, ErrBusy, ErrTimeout, or the
// Sessions' errors.
func (s *Server) Infer(ctx context.Context, c Call) (a Answer, err error) {
	defer func() { s.Record(c.Model, a.versionOr(c.Version), outcome(a, err)) }()
	req := c.Request
	if req == nil {
		if req, err = inference.ParseRequest(c.Body, c.HeaderLen); err != nil {
			return a, errs.Mark(ErrBadInput, err)
		}
	}
	if s.mayRoute(c) && !s.cfg.Sessions.Loaded(c.Model, c.Version) {
		if a, ok := s.routeCold(ctx, c); ok {
			return a, nil
		}
	}
	sess, m, err := s.cfg.Sessions.Session(ctx, c.Model, c.Version)
	if err != nil {
		return a, err
	}
	defer sess.Release()
	p, err := sess.Prepare(req)
	if err != nil {
		return Answer{Version: sess.Version}, errs.Mark(ErrBadInput, err)
	}
	cache := s.cfg.Cache
	if m.NoCache {
		cache = nil
	}
	resp := inference.InferResponse{ModelName: c.Model, ModelVersion: sess.Version, ID: req.ID}
	a = Answer{Status: 200, Version: sess.Version, Cache: api.CacheBypass}
	var key resultcache.Key
	if cache != nil {
		key = resultcache.KeyOf(sess.CID, p.Canonical())
		if outs, ok := s.cached(ctx, cache, key, c.Model, sess.Version); ok {
			resp.Outputs, a.Cache = outs, api.CacheHit
			return encode(a, resp, req, c.Decoded)
		}
		a.Cache = api.CacheMiss
	}
	outs, fwd, err := s.execute(ctx, c, sess, m, p)
	if err != nil || fwd != nil {
		if fwd != nil {
			return *fwd, nil
		}
		return a, err
	}
	resp.Outputs = outs
	if cache != nil {
		if raw, err := json.Marshal(resp.Outputs); err == nil {
			cache.Put(ctx, key, c.Model, sess.Version, raw)
		}
	}
	return encode(a, resp, req, c.Decoded)
}

func (a Answer) versionOr(v string) string {
	if a.Version != "" {
		return a.Version
	}
	return v
}

// cached looks key up, counting hit, miss or cold_miss (the first lookup
// of a version).
func (s *Server) cached(ctx context.Context, cache *resultcache.Cache, key resultcache.Key, model, version string) ([]inference.ResponseOutput, bool) {
	if raw, ok := cache.Get(ctx, key, model); ok {
		var outs []inference.ResponseOutput
		if err := json.Unmarshal(raw, &outs); err == nil {
			s.m.cache.WithLabelValues(model, version, "hit").Inc()
			return outs, true
		}
	}
	result := "miss"
	if !cache.Seen(model, version) {
		result = "cold_miss"
	}
	s.m.cache.WithLabelValues(model, version, result).Inc()
	return nil, false
}

// execute computes p's outputs: in a batch with other requests for the
// same session when the version asks for batching (batch.go), else alone
// in an inference slot of its own. fwd is a warm peer's answer instead.
func (s *Server) execute(ctx context.Context, c Call, sess *inference.Session, m models.Manifest, p *inference.Prepared) (outs []inference.ResponseOutput, fwd *Answer, err error) {
	if spec := s.batchFor(sess, m, p); spec != nil {
		return s.batched(ctx, c, p, spec)
	}
	release, fwd, err := s.admit(ctx, c)
	if err != nil || fwd != nil {
		return nil, fwd, err
	}
	outs, err = s.run(ctx, sess, p, release)
	return outs, nil, err
}

// run runs p on sess holding an inference slot, which it releases as
// soon as the run ends (not when the answer is written).
func (s *Server) run(ctx context.Context, sess *inference.Session, p *inference.Prepared, release func()) ([]inference.ResponseOutput, error) {
	defer release()
	s.running.Add(1)
	defer s.running.Add(-1)
	start := time.Now()
	outs, err := sess.Run(ctx, p)
	s.m.runSeconds.WithLabelValues(sess.Model).Observe(time.Since(start).Seconds())
	return outs, runError(ctx, err)
}

// runError classifies the error of a run under ctx.
func runError(ctx context.Context, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, inference.ErrBadRequest):
		return errs.Mark(ErrBadInput, err)
	case ctx.Err() != nil:
		return ErrTimeout
	default:
		// onnxruntime refused inputs that fit the declared shapes (a
		// model with stricter internal constraints): the caller's to
		// fix, and the peer keeps serving.
		return errs.Mark(ErrBadInput, err)
	}
}

func encode(a Answer, resp inference.InferResponse, req *inference.InferRequest, decoded bool) (Answer, error) {
	if decoded {
		a.Response, a.HeaderLen = &resp, -1
		return a, nil
	}
	body, headerLen, err := inference.EncodeResponse(resp, req)
	if err != nil {
		return a, fmt.Errorf("encode the answer: %w", err)
	}
	a.Body, a.HeaderLen, a.ContentType = body, headerLen, "application/json"
	if headerLen >= 0 {
		a.ContentType = "application/octet-stream"
	}
	return a, nil
}

// admit takes one of the peer's inference slots for c; call release once
// the inference ran. When every slot is taken, a call that may be routed
// goes to a warm peer (fwd is its answer), a call forwarded here is
// refused at once (its origin then serves it), and any other waits for a
// slot within its deadline.
func (s *Server) admit(ctx context.Context, c Call) (release func(), fwd *Answer, err error) {
	slots := s.slots
	if slots == nil {
		return func() {}, nil, nil
	}
	release = func() { <-slots }
	select {
	case slots <- struct{}{}:
		return release, nil, nil
	default:
	}
	switch {
	case s.mayRoute(c):
		if a, ok := s.cfg.Router.Forward(ctx, c); ok {
			s.m.saturated.WithLabelValues("forwarded").Inc()
			return nil, &a, nil
		}
	case c.Forwarded:
		s.m.saturated.WithLabelValues("refused").Inc()
		return nil, nil, fmt.Errorf("%w on this peer (%d in flight, --max-inflight)", ErrBusy, cap(slots))
	}
	select {
	case slots <- struct{}{}:
		s.m.saturated.WithLabelValues("waited").Inc()
		return release, nil, nil
	case <-ctx.Done():
		s.m.saturated.WithLabelValues("refused").Inc()
		return nil, nil, fmt.Errorf("%w within the request's deadline (%d in flight, --max-inflight)", ErrBusy, cap(slots))
	}
}

// mayRoute reports whether c may go to a warm peer: this peer routes,
// the call opted in, is pinned, and did not arrive by routing itself.
func (s *Server) mayRoute(c Call) bool {
	return s.cfg.Router != nil && c.Route && c.Version != "" && !c.Forwarded && c.Request == nil
}

// routeCold forwards a pinned call for a version not loaded here to a
// warm peer, and meanwhile loads the version here for the calls that
// follow.
func (s *Server) routeCold(ctx context.Context, c Call) (Answer, bool) {
	if !s.cfg.Router.HasWarmPeer(c.Model + "@" + c.Version) {
		return Answer{}, false
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		lctx, cancel := context.WithTimeout(s.ctx, forwardTimeout)
		defer cancel()
		if sess, _, err := s.cfg.Sessions.Session(lctx, c.Model, c.Version); err == nil {
			sess.Release()
		}
	}()
	return s.cfg.Router.Forward(ctx, c)
}
