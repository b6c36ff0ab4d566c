package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"github.com/shoal-mesh/shoal/api"
	"io"
	"math"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoal-mesh/shoal/inference"
	"github.com/shoal-mesh/shoal/inference/onnxmodel"
	"github.com/shoal-mesh/shoal/internal/poll"
	"github.com/shoal-mesh/shoal/peer"
)

// announced waits until peer `at` has heard peer `from` announce ref as
// loaded.
func announced(t *testing.T, at, from *peer.Node, ref string) {
	t.Helper()
	eventually(t, "peer announces "+ref+" as loaded", func() error {
		for _, p := range at.Replica().Staleness().Peers {
			if p.ID == from.ID().String() && slices.Contains(p.Loaded, ref) {
				return nil
			}
		}
		return fmt.Errorf("not yet")
	})
}

// TestWarmPeerRouting (issue 8, seed 003): a pinned request for a version
// this peer has not loaded is answered by a peer that has it loaded — when
// both the peers and the request opt in — with exactly that version's
// outputs and the answering peer named; meanwhile this peer loads the
// version and answers later requests itself. A request that does not opt
// in, or whose staleness bound this peer cannot meet, is never forwarded.
func TestWarmPeerRouting(t *testing.T) {
	m := startMesh(t, 2, func(_ int, c *peer.Config) { c.WarmRouting = true })
	warm, cold := m.Node(0), m.Node(1)
	v1, v2 := clsModels(t)
	push(t, warm, "cls", "v1", v1, onnxQuery+"&activate=true")
	push(t, warm, "cls", "v2", v2, onnxQuery)
	eventually(t, "both serve v1", func() error {
		for _, n := range m.Nodes() {
			if v, _ := n.Serving("cls"); v != "v1" {
				return fmt.Errorf("serving %q", v)
			}
		}
		return nil
	})
	// Load v2 on the warm peer only.
	body := clsBody(7)
	direct := inferHTTP(t, warm, "cls", "v2", body)
	if direct.code != 200 {
		t.Fatalf("pinned v2 on the warm peer: %d %s", direct.code, direct.body)
	}
	want := outputsOf(direct.resp)
	if want == outputsOf(inferHTTP(t, warm, "cls", "v1", body).resp) {
		t.Fatal("v1 and v2 give the same outputs: the test cannot tell them apart")
	}
	announced(t, cold, warm, "cls@v2")

	// A bound this peer cannot meet is refused here, not forwarded.
	r := inferHTTP(t, cold, "cls", "v2", body, api.HeaderRoute, "warm", api.HeaderMaxStaleness, "0.000001")
	if r.code != http.StatusServiceUnavailable || r.header.Get(api.HeaderRoutedTo) != "" {
		t.Errorf("a request beyond the staleness bound: %d routed to %q", r.code, r.header.Get(api.HeaderRoutedTo))
	}
	// Opted in: answered by the warm peer, exactly v2.
	r = inferHTTP(t, cold, "cls", "v2", body, api.HeaderRoute, "warm")
	if r.code != 200 {
		t.Fatalf("routed request: %d %s", r.code, r.body)
	}
	if got := r.header.Get(api.HeaderRoutedTo); got != warm.ID().String() {
		t.Errorf("Shoal-Routed-To %q, want the warm peer %s", got, warm.ID())
	}
	if r.header.Get(api.HeaderModelVersion) != "v2" || r.resp.ModelVersion != "v2" || outputsOf(r.resp) != want {
		t.Errorf("routed answer: version %q/%q, outputs equal to v2's: %v", r.header.Get(api.HeaderModelVersion), r.resp.ModelVersion, outputsOf(r.resp) == want)
	}
	// Meanwhile the cold peer loads v2 and then answers itself.
	eventually(t, "the cold peer answers v2 itself", func() error {
		r := inferHTTP(t, cold, "cls", "v2", body, api.HeaderRoute, "warm")
		if r.code != 200 || r.header.Get(api.HeaderRoutedTo) != "" {
			return fmt.Errorf("%d routed to %q", r.code, r.header.Get(api.HeaderRoutedTo))
		}
		if outputsOf(r.resp) != want {
			t.Errorf("local v2 answer differs from the warm peer's")
		}
		return nil
	})
	// A request that does not opt in is never forwarded: v3, loaded on
	// the warm peer only, is loaded and answered here.
	v3, err := onnxmodel.ScaleWeights(v1, 1.5)
	if err != nil {
		t.Fatal(err)
	}
	push(t, warm, "cls", "v3", v3, onnxQuery)
	if r := inferHTTP(t, warm, "cls", "v3", body); r.code != 200 {
		t.Fatalf("v3 on the warm peer: %d", r.code)
	}
	announced(t, cold, warm, "cls@v3")
	r = inferHTTP(t, cold, "cls", "v3", body)
	if r.code != 200 || r.header.Get(api.HeaderRoutedTo) != "" {
		t.Errorf("a request without %s: %d routed to %q", api.HeaderRoute, r.code, r.header.Get(api.HeaderRoutedTo))
	}
	out, in := scrape(t, cold), scrape(t, warm)
	sent, served := sample(out, `shoal_inference_forwarded_total{direction="out",outcome="ok"}`), sample(in, `shoal_inference_forwarded_total{direction="in",outcome="ok"}`)
	if sent < 1 || served != sent {
		t.Errorf("forwarded: the cold peer sent %v, the warm peer served %v\n%s\n%s", sent, served, grepLines(out, "forwarded"), grepLines(in, "forwarded"))
	}
}

func scrape(t *testing.T, n *peer.Node) string {
	t.Helper()
	return string(do(t, "GET", baseURL(n)+"/metrics", nil).body)
}

// sample reads one series' value from a Prometheus text page (0 if absent).
func sample(page, series string) float64 {
	for _, l := range strings.Split(page, "\n") {
		if rest, ok := strings.CutPrefix(l, series+" "); ok {
			var v float64
			fmt.Sscan(rest, &v)
			return v
		}
	}
	return 0
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// chainBody asks the MatMulChain model for an n×n chain (x = 0).
func chainBody(n int) []byte {
	b, _ := json.Marshal(inference.InferRequest{Inputs: []inference.RequestInput{
		{Name: "x", Shape: []int64{1, 1}, Datatype: "FP32", Data: json.RawMessage(`[0]`)},
		{Name: "n", Shape: []int64{2}, Datatype: "INT64", Data: json.RawMessage(fmt.Sprintf("[%d, %d]", n, n))},
	}})
	return b
}

// TestWarmRoutingWhenBusy (issue 8, "no capacity"): a peer with one
// inference slot (--max-inflight 1), kept busy by a long inference,
//   - forwards a pinned request that opted in to a warm peer,
//   - makes a request that did not opt in wait for the slot, and refuses
//     it (503, Retry-After) when its deadline passes first,
//   - refuses at once a request forwarded to it by a peer that lacks the
//     version, so that peer falls back to loading and serving it itself
//     (the warm peer's 5xx path).
//
// Every answer must carry exactly the pinned version's outputs.
func TestWarmRoutingWhenBusy(t *testing.T) {
	m := startMesh(t, 2, func(i int, c *peer.Config) {
		c.WarmRouting = true
		if i == 0 {
			c.MaxInflight = 1
		}
	})
	busy, other := m.Node(0), m.Node(1)
	v1, _ := clsModels(t)
	push(t, busy, "cls", "v1", v1, onnxQuery+"&activate=true")
	push(t, busy, "chain", "v1", onnxmodel.MatMulChain(4), onnxQuery+"&activate=true")
	eventually(t, "both serve cls and chain", func() error {
		for _, n := range m.Nodes() {
			for _, model := range []string{"cls", "chain"} {
				if v, _ := n.Serving(model); v != "v1" {
					return fmt.Errorf("%s serving %q", model, v)
				}
			}
		}
		return nil
	})
	announced(t, busy, other, "cls@v1")
	st, err := busy.Status(context.Background())
	if s := sample(scrape(t, busy), "shoal_inference_slots"); err != nil || s != 1 || st.Inference.Slots != 1 {
		t.Fatalf("shoal_inference_slots = %v, status slots %d (%v), want 1", s, st.Inference.Slots, err)
	}

	// Size the long inference to last a few seconds on this machine.
	start := time.Now()
	if r := inferHTTP(t, busy, "chain", "v1", chainBody(384)); r.code != 200 || !strings.Contains(string(r.body), `"data":[0]`) {
		t.Fatalf("chain: %d %s", r.code, r.body)
	}
	size := int(384 * math.Cbrt(3/max(time.Since(start).Seconds(), 0.001)))
	size = min(max(size, 384), 4096)
	t.Logf("long inference: %d×%d matrices, %d products", size, size, 4)

	type answer struct {
		code int
		body []byte
	}
	for attempt := 1; ; attempt++ {
		// A version only the busy peer has loaded, for the fallback path.
		version := fmt.Sprintf("b%d", attempt)
		vb, err := onnxmodel.ScaleWeights(v1, 1+0.1*float32(attempt))
		if err != nil {
			t.Fatal(err)
		}
		push(t, busy, "cls", version, vb, onnxQuery)
		if r := inferHTTP(t, busy, "cls", version, clsBody(100+attempt)); r.code != 200 {
			t.Fatalf("%s on the busy peer: %d %s", version, r.code, r.body)
		}
		announced(t, other, busy, "cls@"+version)
		bodyA, bodyB, bodyC := clsBody(1000+attempt), clsBody(2000+attempt), clsBody(3000+attempt)
		wantA, wantC := reference(t, v1, bodyA), reference(t, vb, bodyC)

		long := make(chan answer, 1)
		go func() {
			req, _ := http.NewRequest(http.MethodPost, baseURL(busy)+"/v2/models/chain/versions/v1/infer", bytes.NewReader(chainBody(size)))
			req.Header.Set(api.HeaderTimeout, "120")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				long <- answer{code: -1, body: []byte(err.Error())}
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			long <- answer{resp.StatusCode, b}
		}()
		running := func() bool { return sample(scrape(t, busy), "shoal_inference_running") == 1 }
		// Wait (at most 30 s) until it runs, or until it ended without
		// showing as running; the check below tells which.
		waitCtx, cancelWait := context.WithTimeout(context.Background(), 30*time.Second)
		_ = poll.Wait(waitCtx, 10*time.Millisecond, poll.True(
			func() bool { return len(long) > 0 || running() },
			func() string { return "the long inference is not running yet" }))
		cancelWait()
		if len(long) > 0 || !running() {
			// It ended before a scrape saw it (a loaded machine scrapes
			// slowly, or ran it faster than sized): make it longer.
			a := <-long
			if a.code != 200 || attempt == 4 {
				t.Fatalf("the long inference (%d×%d) never showed as running: %d %s", size, size, a.code, a.body)
			}
			t.Logf("the long inference (%d×%d) ended before it showed as running; longer", size, size)
			size = min(size*3/2, 4096)
			continue
		}

		checks := time.Now()
		ra := inferHTTP(t, busy, "cls", "v1", bodyA, api.HeaderRoute, "warm", api.HeaderTimeout, "2")
		waitStart := time.Now()
		rb := inferHTTP(t, busy, "cls", "v1", bodyB, api.HeaderTimeout, "0.3")
		waited := time.Since(waitStart)
		rc := inferHTTP(t, other, "cls", version, bodyC, api.HeaderRoute, "warm")
		// Only the long inference can be running on the busy peer now. If
		// it ended while quick checks were still going (a fast machine),
		// they did not all see a busy peer: make it longer and go again.
		// Checks that took long were held up by it: judge them.
		stillBusy := running() && len(long) == 0
		quick := time.Since(checks) < 2*time.Second
		a := <-long
		if a.code != 200 {
			t.Fatalf("the long inference: %d %s", a.code, a.body)
		}
		if !stillBusy && quick {
			if attempt == 4 {
				t.Fatalf("the long inference (%d×%d) kept ending before the checks did", size, size)
			}
			t.Logf("the long inference (%d×%d) ended before the checks did; longer", size, size)
			size = min(size*3/2, 4096)
			continue
		}

		if ra.code != 200 || ra.header.Get(api.HeaderRoutedTo) != other.ID().String() || outputsOf(ra.resp) != wantA {
			t.Errorf("opted-in request at a busy peer: %d routed to %q (want %s), v1 outputs: %v %s",
				ra.code, ra.header.Get(api.HeaderRoutedTo), other.ID(), outputsOf(ra.resp) == wantA, ra.body)
		}
		if rb.code != http.StatusServiceUnavailable || rb.header.Get("Retry-After") == "" || rb.header.Get(api.HeaderRoutedTo) != "" ||
			rb.errCode() != api.CodeBusy || waited < 300*time.Millisecond {
			t.Errorf("a request that did not opt in, past its deadline: %d after %v, Retry-After %q, routed to %q: %s",
				rb.code, waited, rb.header.Get("Retry-After"), rb.header.Get(api.HeaderRoutedTo), rb.body)
		}
		if rc.code != 200 || rc.header.Get(api.HeaderRoutedTo) != "" || rc.header.Get(api.HeaderModelVersion) != version || outputsOf(rc.resp) != wantC {
			t.Errorf("fallback after the warm peer refused: %d routed to %q, version %q, outputs right: %v %s",
				rc.code, rc.header.Get(api.HeaderRoutedTo), rc.header.Get(api.HeaderModelVersion), outputsOf(rc.resp) == wantC, rc.body)
		}
		bm, om := scrape(t, busy), scrape(t, other)
		if f, r := sample(bm, `shoal_inference_saturated_total{outcome="forwarded"}`), sample(bm, `shoal_inference_saturated_total{outcome="refused"}`); f < 1 || r < 2 {
			t.Errorf("busy peer's saturation counters: forwarded %v (want ≥1), refused %v (want ≥2)\n%s", f, r, grepLines(bm, "saturated"))
		}
		if f := sample(om, `shoal_inference_forwarded_total{direction="out",outcome="failed"}`); f < 1 {
			t.Errorf("the fallback is not counted as a failed forward:\n%s", grepLines(om, "forwarded"))
		}
		// With the slot free again, the busy peer serves locally.
		if r := inferHTTP(t, busy, "cls", "v1", clsBody(4000+attempt), api.HeaderRoute, "warm"); r.code != 200 || r.header.Get(api.HeaderRoutedTo) != "" {
			t.Errorf("an idle peer still forwards: %d routed to %q", r.code, r.header.Get(api.HeaderRoutedTo))
		}
		return
	}
}
