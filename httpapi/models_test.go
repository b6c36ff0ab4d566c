package httpapi

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/crdt"
	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/lifecycle"
	"github.com/shoal-mesh/shoal/store"
	"github.com/shoal-mesh/shoal/store/artifacts"
)

func TestModelsList(t *testing.T) {
	h := newHarness(t)
	want := api.ModelList{Models: []api.ModelInfo{{Name: "resnet", Why: "newest activation",
		Current: &models.Activation{Model: "resnet", Version: "v2"}, Versions: []api.VersionInfo{}, Activations: []models.Activation{}}},
		Publisher: "pub1", Trusted: []models.PublisherID{"pub1", "pub2"}}
	h.models.ListFn = func(ctx context.Context) (api.ModelList, error) { return want, nil }
	w := h.do(t, "GET", "/v1/models", nil)
	wantStatus(t, w, http.StatusOK)
	if got := decode[api.ModelList](t, w); !reflect.DeepEqual(got, want) {
		t.Errorf("list = %+v, want %+v", got, want)
	}

	h.models.ListFn = func(ctx context.Context) (api.ModelList, error) { return api.ModelList{}, context.DeadlineExceeded }
	wantError(t, h.do(t, "GET", "/v1/models", nil), api.CodeUnavailable)
}

func TestModelGet(t *testing.T) {
	h := newHarness(t)
	var asked string
	h.models.ModelFn = func(ctx context.Context, name string) (api.ModelInfo, error) {
		asked = name
		if name == "nope" {
			return api.ModelInfo{}, fmt.Errorf("model %q: %w", name, models.ErrUnknownModel)
		}
		return api.ModelInfo{Name: name, Why: "only version", Serving: &api.ServingInfo{Version: "v1", CID: "bafy"}}, nil
	}
	w := h.do(t, "GET", "/v1/models/resnet", nil)
	wantStatus(t, w, http.StatusOK)
	if mi := decode[api.ModelInfo](t, w); asked != "resnet" || mi.Name != "resnet" || mi.Serving == nil || mi.Serving.CID != "bafy" {
		t.Errorf("asked %q, got %+v", asked, mi)
	}
	e := wantError(t, h.do(t, "GET", "/v1/models/nope", nil), api.CodeModelUnknown)
	if !strings.Contains(e.Message, `"nope"`) {
		t.Errorf("message %q does not name the model", e.Message)
	}
}

// pushed records what Models.Push received.
type pushed struct {
	m    models.Manifest
	body string
}

func recordPush(h *harness, ret models.Manifest, wr crdt.Write) *pushed {
	p := &pushed{}
	h.models.PushFn = func(ctx context.Context, r io.Reader, m models.Manifest) (models.Manifest, crdt.Write, error) {
		b, err := io.ReadAll(r)
		if err != nil {
			return models.Manifest{}, crdt.Write{}, err
		}
		p.m, p.body = m, string(b)
		ret.Model, ret.Version, ret.MediaType = m.Model, m.Version, m.MediaType
		return ret, wr, nil
	}
	return p
}

func TestPush(t *testing.T) {
	h := newHarness(t)
	wr := testWrite("push")
	p := recordPush(h, models.Manifest{CID: "bafyart", SHA256: "abc123", Size: 5}, wr)
	w := h.do(t, "PUT", "/v1/models/resnet/versions/v2?prefetch=true&no_cache=true&media_type=application/vnd.onnx",
		strings.NewReader("bytes"))
	wantStatus(t, w, http.StatusCreated)
	want := models.Manifest{Model: "resnet", Version: "v2", MediaType: models.MediaTypeONNX, Prefetch: true, NoCache: true}
	if !reflect.DeepEqual(p.m, want) || p.body != "bytes" {
		t.Errorf("Push got %+v with %q, want %+v with %q", p.m, p.body, want, "bytes")
	}
	wantToken(t, w, wr)
	res := decode[api.PushResult](t, w)
	if res.Manifest.CID != "bafyart" || res.Manifest.SHA256 != "abc123" || res.Manifest.Model != "resnet" || res.Activation != nil {
		t.Errorf("answer = %+v", res)
	}
	wantCalls(t, h.models.calls, map[string]int{"Push": 1, "Activate": 0})

	// Defaults: an opaque artifact, no prefetch, cached.
	h.do(t, "PUT", "/v1/models/resnet/versions/v3", strings.NewReader("x"))
	want = models.Manifest{Model: "resnet", Version: "v3", MediaType: "application/octet-stream"}
	if !reflect.DeepEqual(p.m, want) {
		t.Errorf("Push got %+v, want %+v", p.m, want)
	}
	// Only "true" turns them on.
	h.do(t, "PUT", "/v1/models/resnet/versions/v4?prefetch=1&no_cache=yes&activate=1", strings.NewReader("x"))
	if p.m.Prefetch || p.m.NoCache {
		t.Errorf("Push got %+v", p.m)
	}
	wantCalls(t, h.models.calls, map[string]int{"Activate": 0})
}

func TestPushActivate(t *testing.T) {
	h := newHarness(t)
	recordPush(h, models.Manifest{CID: "bafyart"}, testWrite("push"))
	awr := testWrite("activation")
	var model, version string
	h.models.ActivateFn = func(ctx context.Context, m, v string) (models.Activation, crdt.Write, error) {
		model, version = m, v
		return models.Activation{Model: m, Version: v, Previous: "v1"}, awr, nil
	}
	w := h.do(t, "PUT", "/v1/models/resnet/versions/v2?activate=true", strings.NewReader("bytes"))
	wantStatus(t, w, http.StatusCreated)
	if model != "resnet" || version != "v2" {
		t.Errorf("Activate(%q, %q), want resnet v2", model, version)
	}
	// The token is the activation's: it covers the push too.
	wantToken(t, w, awr)
	res := decode[api.PushResult](t, w)
	if res.Activation == nil || res.Activation.Version != "v2" || res.Activation.Previous != "v1" || res.Manifest.CID != "bafyart" {
		t.Errorf("answer = %+v", res)
	}

	h.models.ActivateFn = func(ctx context.Context, m, v string) (models.Activation, crdt.Write, error) {
		return models.Activation{}, crdt.Write{}, fmt.Errorf("%s@%s %w: bad graph", m, v, lifecycle.ErrLoadFailed)
	}
	wantError(t, h.do(t, "PUT", "/v1/models/resnet/versions/v2?activate=true", strings.NewReader("bytes")), api.CodeModelLoadFailed)
}

func TestPushWarmup(t *testing.T) {
	h := newHarness(t)
	p := recordPush(h, models.Manifest{}, testWrite("push"))
	req := `{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]}`
	w := h.do(t, "PUT", "/v1/models/m/versions/v1", strings.NewReader("x"),
		api.HeaderWarmup, base64.StdEncoding.EncodeToString([]byte(req)))
	wantStatus(t, w, http.StatusCreated)
	if string(p.m.Warmup) != req {
		t.Errorf("manifest warmup %q, want %q", p.m.Warmup, req)
	}
}

func TestPushWarmupInvalid(t *testing.T) {
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	big := `{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}],"id":"` + strings.Repeat("p", models.MaxWarmup) + `"}`
	for name, v := range map[string]string{
		"not base64":  "{not base64}",
		"not JSON":    b64("hello"),
		"no inputs":   b64(`{"inputs":[]}`),
		"not OIP":     b64(`[1,2,3]`),
		"too large":   b64(big),
		"url base64":  base64.URLEncoding.EncodeToString([]byte(`{"inputs":[{"name":"x?>>","shape":[1],"datatype":"FP32","data":[1]}]}`)),
		"empty input": b64(`{}`),
	} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t)
			e := wantError(t, h.do(t, "PUT", "/v1/models/m/versions/v1", strings.NewReader("x"), api.HeaderWarmup, v), api.CodeWarmupInvalid)
			if !strings.Contains(e.Message, api.HeaderWarmup) {
				t.Errorf("message %q does not name %s", e.Message, api.HeaderWarmup)
			}
			wantCalls(t, h.models.calls, map[string]int{"Push": 0})
		})
	}
}

// TestPushBatchingSettings: the batching settings reach the manifest;
// values out of range or not integers are refused before the upload,
// naming the key.
func TestPushBatchingSettings(t *testing.T) {
	h := newHarness(t)
	p := recordPush(h, models.Manifest{CID: "bafyart"}, testWrite("push"))
	wantStatus(t, h.do(t, "PUT", "/v1/models/cls/versions/v1?max_batch_size=32&max_queue_delay_us=500", strings.NewReader("x")), http.StatusCreated)
	if p.m.MaxBatchSize != 32 || p.m.MaxQueueDelayUS != 500 {
		t.Errorf("Push got %+v", p.m)
	}
	for query, key := range map[string]string{
		"max_batch_size=-1":                           "max_batch_size",
		"max_batch_size=1025":                         "max_batch_size",
		"max_batch_size=eight":                        "max_batch_size",
		"max_batch_size=8&max_queue_delay_us=2e6":     "max_queue_delay_us",
		"max_batch_size=8&max_queue_delay_us=1000001": "max_queue_delay_us",
		"max_queue_delay_us=100":                      "max_queue_delay_us",
	} {
		e := wantError(t, h.do(t, "PUT", "/v1/models/cls/versions/v2?"+query, strings.NewReader("x")), api.CodeRecordInvalid)
		if !strings.Contains(e.Message, key) {
			t.Errorf("%s: message %q does not name %s", query, e.Message, key)
		}
	}
	wantCalls(t, h.models.calls, map[string]int{"Push": 1})
}

func TestPushBadName(t *testing.T) {
	h := newHarness(t)
	for _, path := range []string{
		"/v1/models/-m/versions/v1",
		"/v1/models/m/versions/.v1",
		"/v1/models/m%20x/versions/v1",
		"/v1/models/m/versions/v1@x",
		"/v1/models/" + strings.Repeat("m", 129) + "/versions/v1",
	} {
		wantError(t, h.do(t, "PUT", path, strings.NewReader("x")), api.CodeNameInvalid)
	}
	wantCalls(t, h.models.calls, map[string]int{"Push": 0})
}

func TestPushErrors(t *testing.T) {
	for _, c := range []struct {
		err  error
		code string
	}{
		{fmt.Errorf("resnet@v1: %w", models.ErrDuplicate), api.CodeVersionDuplicate},
		{lifecycle.ErrEmptyArtifact, api.CodeArtifactEmpty},
		{fmt.Errorf("importing: %w", store.ErrDiskFull), api.CodeDiskReserve},
		{fmt.Errorf("signing: %w", crdt.ErrRecordTooLarge), api.CodeRecordInvalid},
		{lifecycle.ErrShuttingDown, api.CodeShuttingDown},
		{&http.MaxBytesError{Limit: api.MaxArtifactBytes}, api.CodeBodyTooLarge},
	} {
		t.Run(c.code, func(t *testing.T) {
			h := newHarness(t)
			h.models.PushFn = func(ctx context.Context, r io.Reader, m models.Manifest) (models.Manifest, crdt.Write, error) {
				return models.Manifest{}, crdt.Write{}, c.err
			}
			wantError(t, h.do(t, "PUT", "/v1/models/m/versions/v1?activate=true", strings.NewReader("x")), c.code)
			wantCalls(t, h.models.calls, map[string]int{"Push": 1, "Activate": 0})
		})
	}
}

func TestActivate(t *testing.T) {
	h := newHarness(t)
	wr := testWrite("act")
	var model, version string
	h.models.ActivateFn = func(ctx context.Context, m, v string) (models.Activation, crdt.Write, error) {
		model, version = m, v
		return models.Activation{Model: m, Version: v, Publisher: "pub1", Previous: "v1"}, wr, nil
	}
	w := h.doJSON(t, "POST", "/v1/models/resnet/activate", api.ActivateRequest{Version: "v2"})
	wantStatus(t, w, http.StatusOK)
	if model != "resnet" || version != "v2" {
		t.Errorf("Activate(%q, %q)", model, version)
	}
	wantToken(t, w, wr)
	if res := decode[api.ActivationResult](t, w); res.Activation.Version != "v2" || res.Activation.Previous != "v1" || res.Activation.Publisher != "pub1" {
		t.Errorf("answer = %+v", res)
	}

	h.models.ActivateFn = func(ctx context.Context, m, v string) (models.Activation, crdt.Write, error) {
		return models.Activation{}, crdt.Write{}, fmt.Errorf("%s@%s: %w", m, v, models.ErrUnknownVersion)
	}
	wantError(t, h.doJSON(t, "POST", "/v1/models/resnet/activate", `{"version":"v9"}`), api.CodeVersionUnknown)
}

func TestActivateBadBody(t *testing.T) {
	h := newHarness(t)
	for _, body := range []string{"", "{", `{"version":""}`, `{}`, `[]`, `{"version":2}`, `"v1"`} {
		wantError(t, h.doJSON(t, "POST", "/v1/models/resnet/activate", body), api.CodeBodyMalformed)
	}
	wantCalls(t, h.models.calls, map[string]int{"Activate": 0})
}

func TestRollback(t *testing.T) {
	h := newHarness(t)
	wr := testWrite("rb")
	var model string
	h.models.RollbackFn = func(ctx context.Context, m string) (models.Activation, crdt.Write, error) {
		model = m
		return models.Activation{Model: m, Version: "v1", Previous: "v2"}, wr, nil
	}
	w := h.do(t, "POST", "/v1/models/resnet/rollback", nil)
	wantStatus(t, w, http.StatusOK)
	wantToken(t, w, wr)
	if res := decode[api.ActivationResult](t, w); model != "resnet" || res.Activation.Version != "v1" {
		t.Errorf("Rollback(%q) answered %+v", model, res)
	}

	h.models.RollbackFn = func(ctx context.Context, m string) (models.Activation, crdt.Write, error) {
		return models.Activation{}, crdt.Write{}, fmt.Errorf("%s: %w", m, models.ErrNoPrevious)
	}
	wantError(t, h.do(t, "POST", "/v1/models/resnet/rollback", nil), api.CodeVersionNoPrevious)
}

func TestPull(t *testing.T) {
	h := newHarness(t)
	started := true
	var model, version string
	h.models.StartPullFn = func(ctx context.Context, m, v string) (api.PullResult, bool, error) {
		model, version = m, v
		state := artifacts.StateVerified
		if started {
			state = artifacts.StateFetching
		}
		return api.PullResult{Ref: m + "@" + v, Local: artifacts.Status{State: state, Size: 10}, Size: 10}, started, nil
	}
	w := h.do(t, "POST", "/v1/models/resnet/versions/v2/pull", nil)
	wantStatus(t, w, http.StatusAccepted)
	if res := decode[api.PullResult](t, w); model != "resnet" || version != "v2" || res.Ref != "resnet@v2" || res.Size != 10 || res.Local.State != artifacts.StateFetching {
		t.Errorf("StartPull(%q, %q) answered %+v", model, version, res)
	}

	started = false
	w = h.do(t, "POST", "/v1/models/resnet/versions/v2/pull", nil)
	wantStatus(t, w, http.StatusOK)
	if res := decode[api.PullResult](t, w); res.Local.State != artifacts.StateVerified {
		t.Errorf("answer = %+v", res)
	}

	h.models.StartPullFn = func(ctx context.Context, m, v string) (api.PullResult, bool, error) {
		return api.PullResult{}, false, fmt.Errorf("%s@%s: %w", m, v, models.ErrUnknownVersion)
	}
	wantError(t, h.do(t, "POST", "/v1/models/resnet/versions/v9/pull", nil), api.CodeVersionUnknown)
}

// artifactBody is an artifact's reader that remembers being closed.
type artifactBody struct {
	io.Reader
	closed bool
}

func (b *artifactBody) Close() error { b.closed = true; return nil }

func TestArtifact(t *testing.T) {
	h := newHarness(t)
	const content = "onnx-bytes"
	var rd *artifactBody
	var asked [2]string
	h.models.ArtifactFn = func(ctx context.Context, m, v string) (models.Manifest, io.ReadCloser, error) {
		asked = [2]string{m, v}
		if v == "" {
			v = "v3"
		}
		rd = &artifactBody{Reader: strings.NewReader(content)}
		return models.Manifest{Model: m, Version: v, CID: "bafyart", SHA256: "5ha", Size: int64(len(content)),
			MediaType: models.MediaTypeONNX}, rd, nil
	}
	check := func(w interface{ Header() http.Header }, version string) {
		t.Helper()
		hd := w.Header()
		for k, want := range map[string]string{api.HeaderModelVersion: version, "ETag": `"bafyart"`,
			"Content-Type": models.MediaTypeONNX, "Content-Length": fmt.Sprint(len(content)), api.HeaderArtifactSHA256: "5ha"} {
			if got := hd.Get(k); got != want {
				t.Errorf("%s = %q, want %q", k, got, want)
			}
		}
	}

	w := h.do(t, "GET", "/v1/models/resnet/artifact", nil)
	wantStatus(t, w, http.StatusOK)
	check(w, "v3")
	if w.Body.String() != content || asked != [2]string{"resnet", ""} || !rd.closed {
		t.Errorf("served %q for Artifact%v (closed %v)", w.Body, asked, rd.closed)
	}
	if n := h.api.ArtifactBytesSent(); n != uint64(len(content)) {
		t.Errorf("ArtifactBytesSent = %d, want %d", n, len(content))
	}

	w = h.do(t, "GET", "/v1/models/resnet/versions/v2/artifact", nil)
	wantStatus(t, w, http.StatusOK)
	check(w, "v2")
	if w.Body.String() != content || asked != [2]string{"resnet", "v2"} {
		t.Errorf("served %q for Artifact%v", w.Body, asked)
	}

	// The version's CID as If-None-Match: 304, no bytes.
	w = h.do(t, "GET", "/v1/models/resnet/versions/v2/artifact", nil, "If-None-Match", `"bafyart"`)
	wantStatus(t, w, http.StatusNotModified)
	check(w, "v2")
	if w.Body.Len() != 0 || !rd.closed {
		t.Errorf("304 with %d bytes (closed %v)", w.Body.Len(), rd.closed)
	}
	// Another CID: the bytes.
	w = h.do(t, "GET", "/v1/models/resnet/versions/v2/artifact", nil, "If-None-Match", `"bafyother"`)
	wantStatus(t, w, http.StatusOK)
	if w.Body.String() != content {
		t.Errorf("served %q", w.Body)
	}

	// HEAD: the headers, no bytes.
	w = h.do(t, "HEAD", "/v1/models/resnet/artifact", nil)
	wantStatus(t, w, http.StatusOK)
	check(w, "v3")
	if w.Body.Len() != 0 {
		t.Errorf("HEAD served %d bytes", w.Body.Len())
	}
	if n := h.api.ArtifactBytesSent(); n != 3*uint64(len(content)) {
		t.Errorf("ArtifactBytesSent = %d, want %d", n, 3*len(content))
	}
}

func TestArtifactErrors(t *testing.T) {
	for _, c := range []struct {
		err  error
		code string
	}{
		{fmt.Errorf("resnet@v2: %w", artifacts.ErrNotLocal), api.CodeArtifactPending},
		{fmt.Errorf("resnet@v2: %w", artifacts.ErrIncomplete), api.CodeArtifactPending},
		{fmt.Errorf("resnet@v2: %w", artifacts.ErrBad), api.CodeArtifactBad},
		{fmt.Errorf("waiting: %w", context.DeadlineExceeded), api.CodeUnavailable},
		{fmt.Errorf("%w: nope", models.ErrUnknownModel), api.CodeModelUnknown},
		{fmt.Errorf("resnet@v9: %w", models.ErrUnknownVersion), api.CodeVersionUnknown},
	} {
		t.Run(c.code, func(t *testing.T) {
			h := newHarness(t)
			h.models.ArtifactFn = func(ctx context.Context, m, v string) (models.Manifest, io.ReadCloser, error) {
				return models.Manifest{}, nil, c.err
			}
			w := h.do(t, "GET", "/v1/models/resnet/versions/v2/artifact", nil)
			wantError(t, w, c.code)
			if v := w.Header().Get(api.HeaderModelVersion); v != "" {
				t.Errorf("an error names version %q", v)
			}
		})
	}
}
