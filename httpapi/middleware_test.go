package httpapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/crdt"
	"github.com/shoal-mesh/shoal/lifecycle"
	"github.com/shoal-mesh/shoal/store"
)

func TestStatusPage(t *testing.T) {
	h := newHarness(t)
	w := h.do(t, "GET", "/", nil)
	wantStatus(t, w, http.StatusOK)
	if ct := w.Header().Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	if csp := w.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
		t.Errorf("Content-Security-Policy %q", csp)
	}
	if cc := w.Header().Get("Cache-Control"); cc != "no-cache" {
		t.Errorf("Cache-Control %q", cc)
	}
	if len(statusPage) == 0 || w.Body.String() != string(statusPage) {
		t.Errorf("the page is not the embedded status.html (%d bytes served, %d embedded)", w.Body.Len(), len(statusPage))
	}
}

func TestHealthz(t *testing.T) {
	h := newHarness(t)
	w := h.do(t, "GET", "/healthz", nil)
	wantStatus(t, w, http.StatusOK)
	body := decode[map[string]string](t, w)
	if body["status"] != "ok" || body["peer_id"] != "peer-test" {
		t.Errorf("healthz = %v", body)
	}
}

func TestStatus(t *testing.T) {
	h := newHarness(t)
	h.peer.StatusFn = func(ctx context.Context) (api.Status, error) {
		return api.Status{PeerID: "peer-test", Mesh: "m1", Connected: 3, Heads: []string{"h1"}}, nil
	}
	w := h.do(t, "GET", "/v1/status", nil)
	wantStatus(t, w, http.StatusOK)
	if s := decode[api.Status](t, w); s.PeerID != "peer-test" || s.Mesh != "m1" || s.Connected != 3 || len(s.Heads) != 1 {
		t.Errorf("status = %+v", s)
	}

	h.peer.StatusFn = func(ctx context.Context) (api.Status, error) {
		return api.Status{}, fmt.Errorf("status: %w", lifecycle.ErrShuttingDown)
	}
	wantError(t, h.do(t, "GET", "/v1/status", nil), api.CodeShuttingDown)

	h.peer.StatusFn = func(ctx context.Context) (api.Status, error) { return api.Status{}, errors.New("badger: boom") }
	wantError(t, h.do(t, "GET", "/v1/status", nil), api.CodeInternal)
}

func TestMetricsPassthrough(t *testing.T) {
	h := newHarness(t)
	w := h.do(t, "GET", "/metrics", nil)
	wantStatus(t, w, http.StatusOK)
	if !strings.Contains(w.Body.String(), "shoal_up 1") {
		t.Errorf("/metrics is not the configured handler: %s", w.Body)
	}

	// Without a metrics handler there is no such route.
	a := New(Config{Peer: h.peer, Consistency: h.cons, Logger: slog.New(slog.DiscardHandler)})
	w = httptest.NewRecorder()
	a.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	wantError(t, w, api.CodeRouteUnknown)
}

func TestUnknownRoute(t *testing.T) {
	h := newHarness(t)
	for _, c := range []struct{ method, path string }{
		{"GET", "/nope"},
		{"GET", "/v1/nope"},
		{"POST", "/"},
		{"DELETE", "/v1/models"},
		{"PATCH", "/v1/models/m"},
		{"GET", "/v2/models/m/versions/v/infer"},
	} {
		t.Run(c.method+c.path, func(t *testing.T) {
			e := wantError(t, h.do(t, c.method, c.path, nil), api.CodeRouteUnknown)
			if !strings.Contains(e.Message, c.method+" "+c.path) {
				t.Errorf("message %q does not name %s %s", e.Message, c.method, c.path)
			}
		})
	}
}

func TestPanicBecomesInternalError(t *testing.T) {
	h := newHarness(t)
	h.cons.Stale = 0.25
	handler := h.api.middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		panic("boom")
	}))
	w := httptest.NewRecorder()
	handler.ServeHTTP(w, httptest.NewRequest("GET", "/x", nil))
	wantError(t, w, api.CodeInternal)
	if got := decode[map[string]any](t, w); len(got) != 2 || got["error"] != "internal error" || got["code"] != "internal" {
		t.Errorf(`body = %v, want {"error":"internal error","code":"internal"}`, got)
	}
	if s := w.Header().Get(api.HeaderStaleness); s != "0.250s" {
		t.Errorf("%s = %q on a panic's answer", api.HeaderStaleness, s)
	}
	if n := testutil.ToFloat64(h.api.requests.WithLabelValues("unmatched", "500")); n != 1 {
		t.Errorf("requests{route=unmatched,code=500} = %v, want 1", n)
	}

	// A panic after the handler wrote leaves its answer alone.
	handler = h.api.middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusAccepted)
		io.WriteString(w, "partial")
		panic("late")
	}))
	w = httptest.NewRecorder()
	handler.ServeHTTP(w, httptest.NewRequest("GET", "/x", nil))
	if w.Code != http.StatusAccepted || w.Body.String() != "partial" {
		t.Errorf("late panic: %d %q, want 202 %q", w.Code, w.Body, "partial")
	}
	if n := testutil.ToFloat64(h.api.requests.WithLabelValues("unmatched", "202")); n != 1 {
		t.Errorf("requests{route=unmatched,code=202} = %v, want 1", n)
	}

	// http.ErrAbortHandler is net/http's own: it goes through.
	handler = h.api.middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		panic(http.ErrAbortHandler)
	}))
	func() {
		defer func() {
			if v := recover(); v != http.ErrAbortHandler {
				t.Errorf("recovered %v, want http.ErrAbortHandler re-panicked", v)
			}
		}()
		handler.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/x", nil))
	}()
}

// writes are the state-changing routes; each needs the token.
var writes = []struct{ method, path, body string }{
	{"PUT", "/v1/models/m/versions/v1", "bytes"},
	{"POST", "/v1/models/m/activate", `{"version":"v1"}`},
	{"POST", "/v1/models/m/rollback", ""},
	{"POST", "/v1/models/m/versions/v1/pull", ""},
	{"POST", "/v1/cache/flush", ""},
	{"POST", "/v1/collections", `{"name":"c","embedder":"e@v1","dimension":2}`},
	{"PUT", "/v1/collections/c/docs/d1", `{"text":"x"}`},
	{"POST", "/v1/collections/c/docs", `{"docs":[{"text":"x"}]}`},
	{"DELETE", "/v1/collections/c/docs/d1", ""},
}

func TestTokenRequiredOnWrites(t *testing.T) {
	for _, c := range writes {
		t.Run(c.method+c.path, func(t *testing.T) {
			h := newHarness(t)
			h.token = "s3cret"
			for _, auth := range []string{"", "Bearer wrong", "s3cret", "Basic s3cret", "Bearer s3cret2"} {
				w := h.doJSON(t, c.method, c.path, c.body, "Authorization", auth)
				wantError(t, w, api.CodeAuthRequired)
				if got := w.Header().Get("WWW-Authenticate"); got != `Bearer realm="shoal"` {
					t.Errorf("WWW-Authenticate %q", got)
				}
			}
			for _, f := range []calls{h.models.calls, h.flusher.calls, h.ret.calls, h.disk.calls} {
				if len(f) != 0 {
					t.Errorf("an unauthorized write reached the components: %v", f)
				}
			}
			// The right token passes.
			if w := h.doJSON(t, c.method, c.path, c.body, "Authorization", "Bearer s3cret"); w.Code == http.StatusUnauthorized {
				t.Errorf("the right token is refused: %s", w.Body)
			}
			// The token may change at run time (SIGHUP).
			h.token = "rotated"
			if w := h.doJSON(t, c.method, c.path, c.body, "Authorization", "Bearer s3cret"); w.Code != http.StatusUnauthorized {
				t.Errorf("the old token still passes after rotation: %d", w.Code)
			}
		})
	}
}

func TestNoTokenConfiguredWritesPass(t *testing.T) {
	h := newHarness(t)
	w := h.do(t, "POST", "/v1/models/m/rollback", nil)
	wantStatus(t, w, http.StatusOK)
}

func TestReadsNeedNoToken(t *testing.T) {
	h := newHarness(t)
	h.token = "s3cret"
	h.ret.CollectionFn = func(c string) (api.CollectionInfo, bool) { return api.CollectionInfo{}, true }
	for _, c := range []struct{ method, path, body string }{
		{"GET", "/", ""},
		{"GET", "/healthz", ""},
		{"GET", "/metrics", ""},
		{"GET", "/v1/status", ""},
		{"GET", "/v1/models", ""},
		{"GET", "/v1/models/m", ""},
		{"GET", "/v2", ""},
		{"GET", "/v2/health/ready", ""},
		{"GET", "/v2/models/m", ""},
		{"POST", "/v2/models/m/infer", `{"inputs":[]}`},
		{"POST", "/v2/models/m/versions/v1/infer", `{"inputs":[]}`},
		{"POST", "/v1/embeddings", `{"model":"e@v1","input":"x"}`},
		{"POST", "/v1/collections/c/query", `{"text":"x"}`},
		{"GET", "/v1/collections", ""},
		{"GET", "/v1/collections/c", ""},
		{"GET", "/v1/collections/c/docs/d", ""},
	} {
		if w := h.doJSON(t, c.method, c.path, c.body); w.Code != http.StatusOK {
			t.Errorf("%s %s without a token: %d %s", c.method, c.path, w.Code, w.Body)
		}
	}
}

func TestIsWrite(t *testing.T) {
	for _, c := range []struct {
		method, path string
		write        bool
	}{
		{"GET", "/v1/models", false},
		{"HEAD", "/v1/models/m/artifact", false},
		{"OPTIONS", "/v1/models", false},
		{"POST", "/v2/models/m/infer", false},
		{"POST", "/v1/embeddings", false},
		{"POST", "/v1/collections/c/query", false},
		{"POST", "/v1/collections", true},
		{"POST", "/v1/collections/c/docs", true},
		{"POST", "/v1/cache/flush", true},
		{"POST", "/v1/models/m/activate", true},
		{"PUT", "/v1/models/m/versions/v", true},
		{"DELETE", "/v1/collections/c/docs/d", true},
		{"PATCH", "/v1/models/m", true},
	} {
		if got := isWrite(httptest.NewRequest(c.method, c.path, nil)); got != c.write {
			t.Errorf("isWrite(%s %s) = %v, want %v", c.method, c.path, got, c.write)
		}
	}
}

func TestStalenessHeaderOnEveryResponse(t *testing.T) {
	h := newHarness(t)
	h.cons.Stale = 1.5
	h.disk.CheckSpaceFn = func(n int64) error { return store.ErrDiskFull }
	for _, c := range []struct{ method, path, body string }{
		{"GET", "/", ""},
		{"GET", "/healthz", ""},
		{"GET", "/metrics", ""},
		{"GET", "/v1/models", ""},
		{"GET", "/nope", ""},                            // 404
		{"POST", "/v1/models/m/rollback", ""},           // 507
		{"POST", "/v1/embeddings", "{"},                 // 400
		{"GET", "/v1/models", ""},                       // 200
		{"POST", "/v2/models/m/infer", `{"inputs":[]}`}, // 200
	} {
		w := h.doJSON(t, c.method, c.path, c.body)
		if got := w.Header().Get(api.HeaderStaleness); got != "1.500s" {
			t.Errorf("%s %s (%d): %s = %q, want 1.500s", c.method, c.path, w.Code, api.HeaderStaleness, got)
		}
	}
	// A write refused for want of the token is an answer too.
	h.token = "s3cret"
	if w := h.doJSON(t, "POST", "/v1/models/m/rollback", ""); w.Code != 401 || w.Header().Get(api.HeaderStaleness) != "1.500s" {
		t.Errorf("401 (%d): %s = %q, want 1.500s", w.Code, api.HeaderStaleness, w.Header().Get(api.HeaderStaleness))
	}
}

func TestFormatStaleness(t *testing.T) {
	for s, want := range map[float64]string{0: "0.000s", 0.25: "0.250s", 2: "2.000s", 61.0625: "61.062s"} {
		if got := FormatStaleness(crdt.Staleness{Seconds: s}); got != want {
			t.Errorf("FormatStaleness(%v) = %q, want %q", s, got, want)
		}
	}
}

func TestDiskReserveRefusesWrites(t *testing.T) {
	h := newHarness(t)
	h.disk.CheckSpaceFn = func(n int64) error { return fmt.Errorf("%w: 10 MB free, reserve 64 MB", store.ErrDiskFull) }
	w := h.do(t, "PUT", "/v1/models/m/versions/v1", strings.NewReader("0123456789"))
	wantError(t, w, api.CodeDiskReserve)
	wantCalls(t, h.models.calls, map[string]int{"Push": 0})
	if len(h.disk.Asked) != 1 || h.disk.Asked[0] != 10 {
		t.Errorf("CheckSpace asked for %v, want [10] (the Content-Length)", h.disk.Asked)
	}
	for _, c := range writes {
		w := h.doJSON(t, c.method, c.path, c.body)
		wantError(t, w, api.CodeDiskReserve)
	}
	for _, f := range []calls{h.models.calls, h.flusher.calls, h.ret.calls} {
		if len(f) != 0 {
			t.Errorf("a write refused for disk reached the components: %v", f)
		}
	}

	// Reads go on.
	asked := len(h.disk.Asked)
	wantStatus(t, h.do(t, "GET", "/v1/models", nil), http.StatusOK)
	wantStatus(t, h.doJSON(t, "POST", "/v2/models/m/infer", `{}`), http.StatusOK)
	wantStatus(t, h.doJSON(t, "POST", "/v1/collections/c/query", `{"text":"x"}`), http.StatusOK)
	if len(h.disk.Asked) != asked {
		t.Errorf("reads checked disk space: %v", h.disk.Asked[asked:])
	}

	// Another failure of the check is the peer's fault.
	h.disk.CheckSpaceFn = func(n int64) error { return errors.New("statfs: input/output error") }
	wantError(t, h.do(t, "POST", "/v1/models/m/rollback", nil), api.CodeInternal)
	wantCalls(t, h.models.calls, map[string]int{"Rollback": 0})
}

func TestRequestMetrics(t *testing.T) {
	h := newHarness(t)
	h.do(t, "GET", "/healthz", nil)
	h.do(t, "GET", "/healthz", nil)
	h.do(t, "GET", "/nope", nil)
	h.do(t, "GET", "/v1/models/m", nil)
	h.models.ModelFn = func(ctx context.Context, name string) (api.ModelInfo, error) {
		return api.ModelInfo{}, lifecycle.ErrShuttingDown
	}
	h.do(t, "GET", "/v1/models/m", nil)
	for _, c := range []struct {
		route, code string
		n           float64
	}{
		{"GET /healthz", "200", 2},
		{"/", "404", 1},
		{"GET /v1/models/{model}", "200", 1},
		{"GET /v1/models/{model}", "503", 1},
	} {
		if n := testutil.ToFloat64(h.api.requests.WithLabelValues(c.route, c.code)); n != c.n {
			t.Errorf("shoal_http_requests_total{route=%q,code=%s} = %v, want %v", c.route, c.code, n, c.n)
		}
	}
	const want = `
# HELP shoal_http_requests_total HTTP API requests by route and status code.
# TYPE shoal_http_requests_total counter
shoal_http_requests_total{code="200",route="GET /healthz"} 2
shoal_http_requests_total{code="200",route="GET /v1/models/{model}"} 1
shoal_http_requests_total{code="404",route="/"} 1
shoal_http_requests_total{code="503",route="GET /v1/models/{model}"} 1
`
	if err := testutil.CollectAndCompare(h.api.requests, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(h.api.duration); n != 3 {
		t.Errorf("%d duration series, want 3 (one per route)", n)
	}
	if cs := h.api.Collectors(); len(cs) != 2 {
		t.Errorf("Collectors() = %d, want 2", len(cs))
	}
	reg := prometheus.NewPedanticRegistry()
	for _, c := range h.api.Collectors() {
		if err := reg.Register(c); err != nil {
			t.Errorf("register: %v", err)
		}
	}
	if _, err := reg.Gather(); err != nil {
		t.Errorf("gather: %v", err)
	}
}

func TestBodyLimit(t *testing.T) {
	for _, c := range []struct {
		method, path string
		limit        int64
	}{
		{"PUT", "/v1/models/m/versions/v", api.MaxArtifactBytes},
		{"POST", "/v2/models/m/infer", api.MaxInferBodyBytes},
		{"POST", "/v2/models/m/versions/v/infer", api.MaxInferBodyBytes},
		{"PUT", "/v1/collections/c/docs/d", api.MaxRAGBody},
		{"POST", "/v1/collections/c/docs", api.MaxRAGBody},
		{"POST", "/v1/collections/c/query", api.MaxRAGBody},
		{"GET", "/v1/collections/c", api.MaxBodyBytes},
		{"POST", "/v1/collections", api.MaxBodyBytes},
		{"POST", "/v1/embeddings", api.MaxBodyBytes},
		{"POST", "/v1/models/m/activate", api.MaxBodyBytes},
	} {
		if got := bodyLimit(httptest.NewRequest(c.method, c.path, nil)); got != c.limit {
			t.Errorf("bodyLimit(%s %s) = %d, want %d", c.method, c.path, got, c.limit)
		}
	}
}

func TestBodyTooLarge(t *testing.T) {
	h := newHarness(t)
	big := `{"name":"` + strings.Repeat("x", api.MaxBodyBytes) + `"}`
	e := wantError(t, h.doJSON(t, "POST", "/v1/collections", big), api.CodeBodyTooLarge)
	if e.Message != "request body larger than 1048576 bytes" {
		t.Errorf("message %q", e.Message)
	}
	wantCalls(t, h.ret.calls, map[string]int{"CreateCollection": 0})

	bigVer := `{"version":"` + strings.Repeat("x", api.MaxBodyBytes) + `"}`
	wantError(t, h.doJSON(t, "POST", "/v1/models/m/activate", bigVer), api.CodeBodyTooLarge)
	wantCalls(t, h.models.calls, map[string]int{"Activate": 0})

	wantError(t, h.doJSON(t, "POST", "/v1/embeddings", `{"model":"e@v1","input":"`+strings.Repeat("x", api.MaxBodyBytes)+`"}`), api.CodeBodyTooLarge)
	wantCalls(t, h.ret.calls, map[string]int{"EmbedTexts": 0})
}
