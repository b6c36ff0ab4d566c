package httpapi

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	cid "github.com/ipfs/go-cid"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/crdt"
)

// The consistency demands are checked on a plain read, GET /v1/models;
// the same code serves every read (a.read, and handleInfer).

func TestParseSeconds(t *testing.T) {
	for s, want := range map[string]time.Duration{
		"2s": 2 * time.Second, "1500ms": 1500 * time.Millisecond, "3": 3 * time.Second,
		"0.5": 500 * time.Millisecond, " 1m ": time.Minute, "0": 0,
	} {
		if got, err := parseSeconds(s); err != nil || got != want {
			t.Errorf("parseSeconds(%q) = %v, %v; want %v", s, got, err, want)
		}
	}
	for _, s := range []string{"", "soon", "-1s", "-2", "1x", "NaN", "nan", "Inf", "+Inf", "-Inf"} {
		if d, err := parseSeconds(s); err == nil {
			t.Errorf("parseSeconds(%q) = %v, want an error", s, d)
		}
	}
	// A number of seconds past what a Duration holds is a long time, not
	// a negative one.
	for _, s := range []string{"1e300", "9223372037", "1e10"} {
		if d, err := parseSeconds(s); err != nil || d < api.MaxWait {
			t.Errorf("parseSeconds(%q) = %v, %v; want a long duration", s, d, err)
		}
	}
}

func TestTimeoutHeader(t *testing.T) {
	h := newHarness(t)
	var deadline time.Time
	h.models.ListFn = func(ctx context.Context) (api.ModelList, error) {
		deadline, _ = ctx.Deadline()
		return api.ModelList{}, nil
	}
	for _, c := range []struct {
		header string
		want   time.Duration
	}{
		{"", api.DefaultWait},
		{"1500ms", 1500 * time.Millisecond},
		{"3", 3 * time.Second},
		{"1h", api.MaxWait}, // capped
		{"1e300", api.MaxWait},
	} {
		start := time.Now()
		w := h.do(t, "GET", "/v1/models", nil, api.HeaderTimeout, c.header)
		wantStatus(t, w, http.StatusOK)
		if got := deadline.Sub(start); got < c.want-time.Second || got > c.want+time.Second {
			t.Errorf("Shoal-Timeout %q: the read's deadline is %v away, want about %v", c.header, got, c.want)
		}
	}
}

func TestTimeoutHeaderMalformed(t *testing.T) {
	h := newHarness(t)
	for _, v := range []string{"soon", "-1s", "1 minute"} {
		e := wantError(t, h.do(t, "GET", "/v1/models", nil, api.HeaderTimeout, v), api.CodeHeaderInvalid)
		if want := api.HeaderTimeout; !strings.Contains(e.Message, want) {
			t.Errorf("message %q does not name %s", e.Message, want)
		}
	}
	wantCalls(t, h.models.calls, map[string]int{"List": 0})
}

func TestAfterMalformed(t *testing.T) {
	h := newHarness(t)
	for _, v := range []string{"not a token", "e30", testWrite("x").Token() + "!!"} {
		wantError(t, h.do(t, "GET", "/v1/models", nil, api.HeaderAfter, v), api.CodeTokenMalformed)
	}
	wantCalls(t, h.models.calls, map[string]int{"List": 0})
	wantCalls(t, h.cons.calls, map[string]int{"WaitFor": 0})
}

func TestAfterWaitsForTheTokensHeads(t *testing.T) {
	h := newHarness(t)
	wr := testWrite("w1")
	wr.Heads = append(wr.Heads, testCID("w2"))
	var got []cid.Cid
	var hadDeadline bool
	h.cons.WaitForFn = func(ctx context.Context, heads []cid.Cid) error {
		got = heads
		_, hadDeadline = ctx.Deadline()
		return nil
	}
	w := h.do(t, "GET", "/v1/models", nil, api.HeaderAfter, wr.Token())
	wantStatus(t, w, http.StatusOK)
	if len(got) != 2 || !got[0].Equals(wr.Heads[0]) || !got[1].Equals(wr.Heads[1]) {
		t.Errorf("WaitFor got heads %v, want %v", got, wr.Heads)
	}
	if !hadDeadline {
		t.Error("WaitFor ran without the request's deadline")
	}
	wantCalls(t, h.models.calls, map[string]int{"List": 1})
}

func TestAfterNotReached(t *testing.T) {
	h := newHarness(t)
	for _, werr := range []error{
		fmt.Errorf("%w: missing heads x", crdt.ErrNotCaughtUp),
		context.DeadlineExceeded,
	} {
		h.cons.WaitForFn = func(ctx context.Context, heads []cid.Cid) error { return werr }
		wantError(t, h.do(t, "GET", "/v1/models", nil, api.HeaderAfter, testWrite("w").Token(), api.HeaderTimeout, "10ms"),
			api.CodeTokenNotReached)
	}
	wantCalls(t, h.models.calls, map[string]int{"List": 0})
}

func TestMaxStalenessExceeded(t *testing.T) {
	h := newHarness(t)
	h.cons.Stale = 3.25
	w := h.do(t, "GET", "/v1/models", nil, api.HeaderMaxStaleness, "2s")
	e := wantError(t, w, api.CodeStalenessExceeded)
	if e.StalenessSeconds != 3.25 || e.MaxStalenessSeconds != 2 {
		t.Errorf("staleness_seconds %v, max_staleness_seconds %v; want 3.25, 2", e.StalenessSeconds, e.MaxStalenessSeconds)
	}
	if raw := decode[map[string]any](t, w); raw["staleness_seconds"] != 3.25 || raw["max_staleness_seconds"] != 2.0 {
		t.Errorf("body = %v", raw)
	}
	if s := w.Header().Get(api.HeaderStaleness); s != "3.250s" {
		t.Errorf("%s = %q", api.HeaderStaleness, s)
	}
	// A policy other than flag refuses too.
	wantError(t, h.do(t, "GET", "/v1/models", nil, api.HeaderMaxStaleness, "2s", api.HeaderStalenessPolicy, "refuse"),
		api.CodeStalenessExceeded)
	wantCalls(t, h.models.calls, map[string]int{"List": 0})
}

func TestMaxStalenessWithin(t *testing.T) {
	h := newHarness(t)
	h.cons.Stale = 2
	w := h.do(t, "GET", "/v1/models", nil, api.HeaderMaxStaleness, "2s")
	wantStatus(t, w, http.StatusOK)
	if s := w.Header().Get(api.HeaderStale); s != "" {
		t.Errorf("%s = %q within the bound", api.HeaderStale, s)
	}
	// A huge bound is a loose one (it once overflowed into a negative
	// duration and refused every read).
	wantStatus(t, h.do(t, "GET", "/v1/models", nil, api.HeaderMaxStaleness, "1e10"), http.StatusOK)
}

func TestStalenessPolicyFlag(t *testing.T) {
	h := newHarness(t)
	h.cons.Stale = 9
	for _, policy := range []string{"flag", "FLAG"} {
		w := h.do(t, "GET", "/v1/models", nil, api.HeaderMaxStaleness, "500ms", api.HeaderStalenessPolicy, policy)
		wantStatus(t, w, http.StatusOK)
		if s := w.Header().Get(api.HeaderStale); s != "true" {
			t.Errorf("policy %q: %s = %q, want true", policy, api.HeaderStale, s)
		}
	}
	wantCalls(t, h.models.calls, map[string]int{"List": 2})
}

func TestMaxStalenessMalformed(t *testing.T) {
	h := newHarness(t)
	e := wantError(t, h.do(t, "GET", "/v1/models", nil, api.HeaderMaxStaleness, "fresh"), api.CodeHeaderInvalid)
	if !strings.Contains(e.Message, api.HeaderMaxStaleness) {
		t.Errorf("message %q does not name %s", e.Message, api.HeaderMaxStaleness)
	}
	wantCalls(t, h.models.calls, map[string]int{"List": 0})
}

// TestWritesWaitForShoalAfter: a write that builds on another peer's
// write — a document into a collection created there, activating a
// version pushed there — carries that write's token and waits for it,
// as reads do, instead of failing as unknown on a peer that has not
// received it yet. A token that is not reached refuses the write before
// anything is written.
func TestWritesWaitForShoalAfter(t *testing.T) {
	for _, tc := range []struct {
		method, path, body string
		wrote              func(h *harness) int
	}{
		{"PUT", "/v1/collections/notes/docs/a", `{"text":"t"}`, func(h *harness) int { return h.ret.calls["PrepareDocs"] + h.ret.calls["PutDocs"] }},
		{"POST", "/v1/collections/notes/docs", `{"docs":[{"id":"a","text":"t"}]}`, func(h *harness) int { return h.ret.calls["PrepareDocs"] + h.ret.calls["PutDocs"] }},
		{"DELETE", "/v1/collections/notes/docs/a", ``, func(h *harness) int { return h.ret.calls["DeleteDoc"] }},
		{"POST", "/v1/collections", `{"name":"notes","embedder":"e@v1","dimension":4}`, func(h *harness) int { return h.ret.calls["CreateCollection"] }},
		{"POST", "/v1/models/m/activate", `{"version":"v1"}`, func(h *harness) int { return h.models.calls["Activate"] }},
		{"POST", "/v1/models/m/rollback", ``, func(h *harness) int { return h.models.calls["Rollback"] }},
		{"PUT", "/v1/models/m/versions/v1", `bytes`, func(h *harness) int { return h.models.calls["Push"] }},
		{"POST", "/v1/cache/flush", ``, func(h *harness) int { return h.flusher.calls["Flush"] }},
	} {
		h := newHarness(t)
		h.cons.WaitForFn = func(ctx context.Context, heads []cid.Cid) error {
			return fmt.Errorf("%w: missing heads x", crdt.ErrNotCaughtUp)
		}
		w := h.do(t, tc.method, tc.path, strings.NewReader(tc.body), api.HeaderAfter, testWrite("w").Token(), api.HeaderTimeout, "10ms")
		if e := decode[api.Error](t, w); e.Code != api.CodeTokenNotReached {
			t.Errorf("%s %s with an unreached token: %d %s, want %s", tc.method, tc.path, w.Code, e.Code, api.CodeTokenNotReached)
		}
		if n := tc.wrote(h); n != 0 {
			t.Errorf("%s %s wrote (%d calls) before its token was reached", tc.method, tc.path, n)
		}
		if h.cons.calls["WaitFor"] != 1 {
			t.Errorf("%s %s: WaitFor called %d times", tc.method, tc.path, h.cons.calls["WaitFor"])
		}
	}
}
