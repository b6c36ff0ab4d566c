package httpapi

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/crdt"
	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/inference"
	"github.com/shoal-mesh/shoal/lifecycle"
	"github.com/shoal-mesh/shoal/serving"
)

func TestServerMetadata(t *testing.T) {
	h := newHarness(t)
	w := h.do(t, "GET", "/v2", nil)
	wantStatus(t, w, http.StatusOK)
	md := decode[inference.ServerMetadata](t, w)
	if md.Name != "shoal" || md.Version != "1.2.3-test" || !reflect.DeepEqual(md.Extensions, []string{"shoal_consistency", "shoal_result_cache"}) {
		t.Errorf("server metadata = %+v", md)
	}
}

func TestLive(t *testing.T) {
	h := newHarness(t)
	w := h.do(t, "GET", "/v2/health/live", nil)
	wantStatus(t, w, http.StatusOK)
	if b := decode[map[string]bool](t, w); !b["live"] {
		t.Errorf("live = %v", b)
	}
}

func TestReady(t *testing.T) {
	h := newHarness(t)
	w := h.do(t, "GET", "/v2/health/ready", nil)
	wantStatus(t, w, http.StatusOK)
	if b := decode[map[string]any](t, w); b["ready"] != true {
		t.Errorf("ready = %v", b)
	}

	h.models.ReadyFn = func(ctx context.Context) (bool, string) { return false, "resnet@v2 not loaded" }
	w = h.do(t, "GET", "/v2/health/ready", nil)
	wantStatus(t, w, http.StatusServiceUnavailable)
	if ra := w.Header().Get("Retry-After"); ra != "5" {
		t.Errorf("Retry-After %q, want 5", ra)
	}
	b := decode[map[string]any](t, w)
	if b["ready"] != false || b["error"] != "resnet@v2 not loaded" || b["code"] != api.CodeModelNotLoaded {
		t.Errorf("not ready = %v", b)
	}
}

func TestModelMetadata(t *testing.T) {
	h := newHarness(t)
	var asked [2]string
	h.models.MetadataFn = func(ctx context.Context, m, v string) (inference.ModelMetadata, string, error) {
		asked = [2]string{m, v}
		served := v
		if v == "" {
			served = "v3"
		}
		return inference.ModelMetadata{Name: m, Versions: []string{served}, Platform: "onnxruntime",
			Inputs:  []inference.TensorMetadata{{Name: "x", Datatype: "FP32", Shape: []int64{-1, 3}}},
			Outputs: []inference.TensorMetadata{{Name: "y", Datatype: "FP32", Shape: []int64{-1, 1}}}}, served, nil
	}
	for _, c := range []struct{ path, model, version, served string }{
		{"/v2/models/resnet", "resnet", "", "v3"},
		{"/v2/models/resnet/versions/v2", "resnet", "v2", "v2"},
	} {
		w := h.do(t, "GET", c.path, nil)
		wantStatus(t, w, http.StatusOK)
		if asked != [2]string{c.model, c.version} {
			t.Errorf("%s: Metadata%v", c.path, asked)
		}
		if v := w.Header().Get(api.HeaderModelVersion); v != c.served {
			t.Errorf("%s: %s = %q, want %q", c.path, api.HeaderModelVersion, v, c.served)
		}
		md := decode[inference.ModelMetadata](t, w)
		if md.Name != "resnet" || md.Platform != "onnxruntime" || len(md.Inputs) != 1 || md.Inputs[0].Name != "x" ||
			!reflect.DeepEqual(md.Inputs[0].Shape, []int64{-1, 3}) || len(md.Outputs) != 1 {
			t.Errorf("%s: metadata %+v", c.path, md)
		}
	}

	for _, c := range []struct {
		err  error
		code string
	}{
		{fmt.Errorf("resnet@v2: %w", lifecycle.ErrNotONNX), api.CodeModelNotONNX},
		{fmt.Errorf("resnet: %w", lifecycle.ErrNotLoaded), api.CodeModelNotLoaded},
		{fmt.Errorf("%w: resnet", models.ErrUnknownModel), api.CodeModelUnknown},
		{lifecycle.ErrInferenceOff, api.CodeInferenceOff},
	} {
		h.models.MetadataFn = func(ctx context.Context, m, v string) (inference.ModelMetadata, string, error) {
			return inference.ModelMetadata{}, "", c.err
		}
		wantError(t, h.do(t, "GET", "/v2/models/resnet", nil), c.code)
	}
}

func TestModelReady(t *testing.T) {
	h := newHarness(t)
	var asked [2]string
	h.models.ModelReadyFn = func(ctx context.Context, m, v string) (lifecycle.ModelReadiness, error) {
		asked = [2]string{m, v}
		if v == "" {
			v = "v3"
		}
		return lifecycle.ModelReadiness{Ready: true, Version: v}, nil
	}
	w := h.do(t, "GET", "/v2/models/resnet/ready", nil)
	wantStatus(t, w, http.StatusOK)
	if b := decode[map[string]any](t, w); asked != [2]string{"resnet", ""} || b["name"] != "resnet" || b["ready"] != true || b["version"] != "v3" {
		t.Errorf("ModelReady%v answered %v", asked, b)
	}
	if v := w.Header().Get(api.HeaderModelVersion); v != "v3" {
		t.Errorf("%s = %q, want v3", api.HeaderModelVersion, v)
	}

	// Pinned: no version header (the URL names it).
	w = h.do(t, "GET", "/v2/models/resnet/versions/v2/ready", nil)
	wantStatus(t, w, http.StatusOK)
	if b := decode[map[string]any](t, w); asked != [2]string{"resnet", "v2"} || b["version"] != "v2" {
		t.Errorf("ModelReady%v answered %v", asked, b)
	}
	if v := w.Header().Get(api.HeaderModelVersion); v != "" {
		t.Errorf("pinned: %s = %q", api.HeaderModelVersion, v)
	}

	h.models.ModelReadyFn = func(ctx context.Context, m, v string) (lifecycle.ModelReadiness, error) {
		return lifecycle.ModelReadiness{Ready: false, Version: v, Reason: "does not load: bad graph"}, nil
	}
	w = h.do(t, "GET", "/v2/models/resnet/versions/v2/ready", nil)
	wantStatus(t, w, http.StatusServiceUnavailable)
	if ra := w.Header().Get("Retry-After"); ra != "5" {
		t.Errorf("Retry-After %q, want 5", ra)
	}
	if b := decode[map[string]any](t, w); b["ready"] != false || b["error"] != "does not load: bad graph" || b["name"] != "resnet" ||
		b["code"] != api.CodeModelLoadFailed {
		t.Errorf("not ready = %v", b)
	}

	// Not loaded yet, no reason: model.not_loaded.
	h.models.ModelReadyFn = func(ctx context.Context, m, v string) (lifecycle.ModelReadiness, error) {
		return lifecycle.ModelReadiness{Ready: false}, nil
	}
	w = h.do(t, "GET", "/v2/models/resnet/ready", nil)
	wantStatus(t, w, http.StatusServiceUnavailable)
	if b := decode[map[string]any](t, w); b["ready"] != false || b["code"] != api.CodeModelNotLoaded || b["error"] != nil || b["version"] != nil {
		t.Errorf("not ready = %v", b)
	}
	if v := w.Header().Get(api.HeaderModelVersion); v != "" {
		t.Errorf("not ready: %s = %q", api.HeaderModelVersion, v)
	}

	h.models.ModelReadyFn = func(ctx context.Context, m, v string) (lifecycle.ModelReadiness, error) {
		return lifecycle.ModelReadiness{}, fmt.Errorf("%s@%s: %w", m, v, models.ErrUnknownVersion)
	}
	wantError(t, h.do(t, "GET", "/v2/models/resnet/versions/v9/ready", nil), api.CodeVersionUnknown)
}

// recordCall makes Infer remember its call (the body copied: it aliases
// a pooled buffer) and its deadline, and answer ans.
func recordCall(h *harness, ans serving.Answer, err error) (*serving.Call, *time.Time) {
	var got serving.Call
	var deadline time.Time
	h.inf.InferFn = func(ctx context.Context, c serving.Call) (serving.Answer, error) {
		got = c
		got.Body = append([]byte(nil), c.Body...)
		deadline, _ = ctx.Deadline()
		return ans, err
	}
	return &got, &deadline
}

func TestInferCall(t *testing.T) {
	h := newHarness(t)
	got, deadline := recordCall(h, serving.Answer{Status: 200, HeaderLen: -1}, nil)
	tok := testWrite("w").Token()
	body := `{"inputs":[]}` + "\x00\x01\x02\x03"
	start := time.Now()
	w := h.do(t, "POST", "/v2/models/resnet/versions/v2/infer", strings.NewReader(body),
		inference.HeaderInferenceHeaderLength, "13",
		api.HeaderRoute, api.RouteWarm,
		serving.HeaderForwardedBy, "12D3KooWpeer",
		"Content-Type", "application/octet-stream",
		api.HeaderMaxStaleness, "5s",
		api.HeaderStalenessPolicy, "flag",
		api.HeaderAfter, tok,
		api.HeaderTimeout, "3s",
		"X-Other", "not forwarded")
	wantStatus(t, w, http.StatusOK)
	want := serving.Call{Model: "resnet", Version: "v2", Body: []byte(body), HeaderLen: 13, Route: true, Forwarded: true,
		Headers: map[string]string{"Content-Type": "application/octet-stream", inference.HeaderInferenceHeaderLength: "13",
			api.HeaderMaxStaleness: "5s", api.HeaderStalenessPolicy: "flag", api.HeaderAfter: tok, api.HeaderTimeout: "3s"}}
	if !reflect.DeepEqual(*got, want) {
		t.Errorf("Infer got\n%+v\nwant\n%+v", *got, want)
	}
	if d := deadline.Sub(start); d < 2*time.Second || d > 4*time.Second {
		t.Errorf("Infer's deadline is %v away, want about 3s (Shoal-Timeout)", d)
	}
	wantCalls(t, h.inf.calls, map[string]int{"Infer": 1, "Record": 0})
	wantCalls(t, h.cons.calls, map[string]int{"WaitFor": 1})

	// Unpinned, no extras: the current version, JSON, not routed.
	w = h.do(t, "POST", "/v2/models/resnet/infer", strings.NewReader(`{"inputs":[]}`), api.HeaderRoute, "cold")
	wantStatus(t, w, http.StatusOK)
	want = serving.Call{Model: "resnet", Body: []byte(`{"inputs":[]}`), HeaderLen: -1, Headers: map[string]string{}}
	if !reflect.DeepEqual(*got, want) {
		t.Errorf("Infer got\n%+v\nwant\n%+v", *got, want)
	}
}

func TestInferAnswerJSON(t *testing.T) {
	h := newHarness(t)
	out := `{"model_name":"resnet","outputs":[]}`
	recordCall(h, serving.Answer{Status: 200, Version: "v2", Cache: api.CacheHit, RoutedTo: "12D3KooWwarm",
		ContentType: "application/json", HeaderLen: -1, Body: []byte(out)}, nil)
	w := h.doJSON(t, "POST", "/v2/models/resnet/infer", `{"inputs":[]}`)
	wantStatus(t, w, http.StatusOK)
	for k, want := range map[string]string{api.HeaderModelVersion: "v2", api.HeaderCache: api.CacheHit, api.HeaderRoutedTo: "12D3KooWwarm",
		"Content-Type": "application/json", "Content-Length": fmt.Sprint(len(out)), inference.HeaderInferenceHeaderLength: "", "Retry-After": ""} {
		if got := w.Header().Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if w.Body.String() != out {
		t.Errorf("body %q, want %q", w.Body, out)
	}
}

func TestInferAnswerBinary(t *testing.T) {
	h := newHarness(t)
	out := []byte(`{"outputs":[]}` + "\x00\x00\x80\x3f")
	recordCall(h, serving.Answer{Status: 200, Version: "v2", Cache: api.CacheMiss,
		ContentType: "application/octet-stream", HeaderLen: 14, Body: out}, nil)
	w := h.doJSON(t, "POST", "/v2/models/resnet/infer", `{"inputs":[]}`)
	wantStatus(t, w, http.StatusOK)
	for k, want := range map[string]string{inference.HeaderInferenceHeaderLength: "14", "Content-Type": "application/octet-stream",
		"Content-Length": fmt.Sprint(len(out)), api.HeaderCache: api.CacheMiss, api.HeaderRoutedTo: ""} {
		if got := w.Header().Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if w.Body.String() != string(out) {
		t.Errorf("body %q, want %q", w.Body, out)
	}

	// A JSON part of 0 bytes is a length too.
	recordCall(h, serving.Answer{Status: 200, ContentType: "application/octet-stream", HeaderLen: 0, Body: []byte{1, 2}}, nil)
	w = h.doJSON(t, "POST", "/v2/models/resnet/infer", `{"inputs":[]}`)
	if got := w.Header().Get(inference.HeaderInferenceHeaderLength); got != "0" {
		t.Errorf("%s = %q, want 0", inference.HeaderInferenceHeaderLength, got)
	}
}

func TestInferAnswerFromWarmPeerAsItCame(t *testing.T) {
	h := newHarness(t)
	body := `{"error":"no inference slot free","code":"busy"}`
	recordCall(h, serving.Answer{Status: 503, Version: "v2", RoutedTo: "12D3KooWwarm", RetryAfter: "2",
		ContentType: "application/json", HeaderLen: -1, Body: []byte(body)}, nil)
	w := h.doJSON(t, "POST", "/v2/models/resnet/versions/v2/infer", `{"inputs":[]}`)
	wantStatus(t, w, http.StatusServiceUnavailable)
	if ra := w.Header().Get("Retry-After"); ra != "2" {
		t.Errorf("Retry-After %q, want 2", ra)
	}
	if w.Body.String() != body || w.Header().Get(api.HeaderRoutedTo) != "12D3KooWwarm" {
		t.Errorf("answer %q, routed to %q", w.Body, w.Header().Get(api.HeaderRoutedTo))
	}
}

func TestInferErrors(t *testing.T) {
	for _, c := range []struct {
		err     error
		version string // Answer.Version with the error
		code    string
	}{
		{fmt.Errorf("resnet@v2: %w", serving.ErrBusy), "v2", api.CodeBusy},
		{serving.ErrTimeout, "v2", api.CodeInferenceTimeout},
		{fmt.Errorf("%w: input x: shape [2] want [3]", serving.ErrBadInput), "v2", api.CodeInferenceInput},
		{fmt.Errorf("%w: no inputs", inference.ErrBadRequest), "", api.CodeInferenceInput},
		{fmt.Errorf("resnet: %w", lifecycle.ErrNotLoaded), "", api.CodeModelNotLoaded},
		{fmt.Errorf("%w: resnet", models.ErrUnknownModel), "", api.CodeModelUnknown},
		{fmt.Errorf("resnet@v2: %w", lifecycle.ErrNotONNX), "v2", api.CodeModelNotONNX},
		{lifecycle.ErrInferenceOff, "", api.CodeInferenceOff},
		{fmt.Errorf("onnxruntime: %s", "segfault averted"), "v2", api.CodeInternal},
	} {
		t.Run(c.code, func(t *testing.T) {
			h := newHarness(t)
			recordCall(h, serving.Answer{Version: c.version}, c.err)
			w := h.doJSON(t, "POST", "/v2/models/resnet/infer", `{"inputs":[]}`)
			wantError(t, w, c.code)
			if v := w.Header().Get(api.HeaderModelVersion); v != c.version {
				t.Errorf("%s = %q, want %q", api.HeaderModelVersion, v, c.version)
			}
			// Infer counts its own calls.
			wantCalls(t, h.inf.calls, map[string]int{"Infer": 1, "Record": 0})
		})
	}
}

func TestInferRecordsEarlyFailures(t *testing.T) {
	bigBody := func() io.Reader { return io.LimitReader(zeros{}, api.MaxInferBodyBytes+1) }
	for _, c := range []struct {
		name    string
		path    string
		body    func() io.Reader
		hdr     []string
		stale   float64
		code    string
		outcome string
		version string
	}{
		{"bad timeout", "/v2/models/resnet/versions/v2/infer", nil, []string{api.HeaderTimeout, "soon"}, 0,
			api.CodeHeaderInvalid, serving.OutcomeError, "v2"},
		{"bad token", "/v2/models/resnet/infer", nil, []string{api.HeaderAfter, "garbage"}, 0,
			api.CodeTokenMalformed, serving.OutcomeError, ""},
		{"stale", "/v2/models/resnet/infer", nil, []string{api.HeaderMaxStaleness, "1s"}, 4,
			api.CodeStalenessExceeded, serving.OutcomeError, ""},
		{"bad header length", "/v2/models/resnet/versions/v2/infer", nil, []string{inference.HeaderInferenceHeaderLength, "ten"}, 0,
			api.CodeInferenceInput, serving.OutcomeBadRequest, "v2"},
		{"negative header length", "/v2/models/resnet/infer", nil, []string{inference.HeaderInferenceHeaderLength, "-1"}, 0,
			api.CodeInferenceInput, serving.OutcomeBadRequest, ""},
		{"body too large", "/v2/models/resnet/versions/v2/infer", bigBody, nil, 0,
			api.CodeBodyTooLarge, serving.OutcomeBadRequest, "v2"},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			h.cons.Stale = c.stale
			body := io.Reader(strings.NewReader(`{"inputs":[]}`))
			if c.body != nil {
				body = c.body()
			}
			wantError(t, h.do(t, "POST", c.path, body, c.hdr...), c.code)
			wantCalls(t, h.inf.calls, map[string]int{"Infer": 0, "Record": 1})
			if want := []recorded{{"resnet", c.version, c.outcome}}; !reflect.DeepEqual(h.inf.Recorded, want) {
				t.Errorf("recorded %v, want %v", h.inf.Recorded, want)
			}
		})
	}
}

// zeros reads as endless zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func TestCacheFlush(t *testing.T) {
	h := newHarness(t)
	wr := testWrite("flush")
	var asked []string
	h.flusher.FlushFn = func(ctx context.Context, model string) (api.CacheFlush, crdt.Write, error) {
		asked = append(asked, model)
		scope := model
		if scope == "" {
			scope = api.CacheFlushAll
		}
		return api.CacheFlush{Scope: scope, HLC: wr.HLC}, wr, nil
	}
	w := h.do(t, "POST", "/v1/cache/flush?model=resnet", nil)
	wantStatus(t, w, http.StatusOK)
	wantToken(t, w, wr)
	if b := decode[struct{ Flush api.CacheFlush }](t, w); b.Flush.Scope != "resnet" || b.Flush.HLC != wr.HLC {
		t.Errorf("answer = %+v", b)
	}
	w = h.do(t, "POST", "/v1/cache/flush", nil)
	wantStatus(t, w, http.StatusOK)
	if b := decode[struct{ Flush api.CacheFlush }](t, w); b.Flush.Scope != api.CacheFlushAll {
		t.Errorf("answer = %+v", b)
	}
	if !reflect.DeepEqual(asked, []string{"resnet", ""}) {
		t.Errorf("Flush got %q", asked)
	}

	h.flusher.FlushFn = func(ctx context.Context, model string) (api.CacheFlush, crdt.Write, error) {
		return api.CacheFlush{}, crdt.Write{}, fmt.Errorf("%w: model %q", models.ErrBadName, model)
	}
	wantError(t, h.do(t, "POST", "/v1/cache/flush?model=-x", nil), api.CodeNameInvalid)
}
