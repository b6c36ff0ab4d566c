package e2e

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/shoal-mesh/shoal/inference/onnxmodel"
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
	r := inferHTTP(t, cold, "cls", "v2", body, peer.HeaderRoute, "warm", peer.HeaderMaxStaleness, "0.000001")
	if r.code != http.StatusServiceUnavailable || r.header.Get(peer.HeaderRoutedTo) != "" {
		t.Errorf("a request beyond the staleness bound: %d routed to %q", r.code, r.header.Get(peer.HeaderRoutedTo))
	}
	// Opted in: answered by the warm peer, exactly v2.
	r = inferHTTP(t, cold, "cls", "v2", body, peer.HeaderRoute, "warm")
	if r.code != 200 {
		t.Fatalf("routed request: %d %s", r.code, r.body)
	}
	if got := r.header.Get(peer.HeaderRoutedTo); got != warm.ID().String() {
		t.Errorf("Shoal-Routed-To %q, want the warm peer %s", got, warm.ID())
	}
	if r.header.Get(peer.HeaderModelVersion) != "v2" || r.resp.ModelVersion != "v2" || outputsOf(r.resp) != want {
		t.Errorf("routed answer: version %q/%q, outputs equal to v2's: %v", r.header.Get(peer.HeaderModelVersion), r.resp.ModelVersion, outputsOf(r.resp) == want)
	}
	// Meanwhile the cold peer loads v2 and then answers itself.
	eventually(t, "the cold peer answers v2 itself", func() error {
		r := inferHTTP(t, cold, "cls", "v2", body, peer.HeaderRoute, "warm")
		if r.code != 200 || r.header.Get(peer.HeaderRoutedTo) != "" {
			return fmt.Errorf("%d routed to %q", r.code, r.header.Get(peer.HeaderRoutedTo))
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
	if r.code != 200 || r.header.Get(peer.HeaderRoutedTo) != "" {
		t.Errorf("a request without %s: %d routed to %q", peer.HeaderRoute, r.code, r.header.Get(peer.HeaderRoutedTo))
	}
	out, in := scrape(t, cold), scrape(t, warm)
	sent, served := sample(out, `shoal_inference_forwarded_total{direction="out",outcome="ok"}`), sample(in, `shoal_inference_forwarded_total{direction="in",outcome="ok"}`)
	if sent < 1 || served != sent {
		t.Errorf("forwarded: the cold peer sent %v, the warm peer served %v\n%s\n%s", sent, served, grepLines(out, "forwarded"), grepLines(in, "forwarded"))
	}
}

func scrape(t *testing.T, n *peer.Node) string {
	t.Helper()
	return string(do(t, "GET", api(n)+"/metrics", nil).body)
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
