package peer

import (
	"context"
	"encoding/json"
	"errors"
	"github.com/shoal-mesh/shoal/api"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

func startNode(t *testing.T) *Node {
	t.Helper()
	n, err := New(context.Background(), Config{
		DataDir: t.TempDir(), APIAddr: "127.0.0.1:0", ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"},
		Mesh: "apitest", NoSync: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return n
}

func get(t *testing.T, url string) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func TestStatusEndpoint(t *testing.T) {
	n := startNode(t)
	if _, err := n.Replica().Put(context.Background(), "/test/k", "test.kv", "v"); err != nil {
		t.Fatal(err)
	}
	resp, body := get(t, "http://"+n.APIAddr()+"/v1/status")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	if h := resp.Header.Get(api.HeaderStaleness); !strings.HasSuffix(h, "s") {
		t.Errorf("%s header = %q", api.HeaderStaleness, h)
	}
	var raw map[string]any
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"peer_id", "addrs", "mesh", "peers", "staleness_seconds", "heads", "state_hash", "started_at"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("status lacks %q: %s", k, body)
		}
	}
	var st api.Status
	json.Unmarshal(body, &st)
	want, _ := n.Replica().StateHash(context.Background())
	if st.PeerID != n.ID().String() || st.Mesh != "apitest" || st.StateHash != want || len(st.Heads) != 1 {
		t.Errorf("status = %+v", st)
	}
}

func TestMetricsParse(t *testing.T) {
	n := startNode(t)
	resp, body := get(t, "http://"+n.APIAddr()+"/metrics")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("metrics do not parse: %v", err)
	}
	for _, name := range []string{"shoal_staleness_seconds", "shoal_peers", "shoal_crdt_heads", "shoal_crdt_queued_jobs", "shoal_crdt_superseded_records",
		"shoal_crdt_height", "shoal_heartbeats_total", "shoal_build_info", "shoal_rejected_records_total", "shoal_bitswap_bytes_total"} {
		if _, ok := fams[name]; !ok {
			t.Errorf("metric %s missing", name)
		}
	}
	states := map[string]bool{}
	for _, m := range fams["shoal_peers"].GetMetric() {
		for _, l := range m.GetLabel() {
			states[l.GetValue()] = true
		}
	}
	if !states["reachable"] || !states["unreachable"] {
		t.Errorf("shoal_peers states = %v", states)
	}
}

// TestUnknownRouteAnswersWithACode is the issue's own check, on a whole
// peer: a 404 with a stable code, for a route and for a model.
func TestUnknownRouteAnswersWithACode(t *testing.T) {
	n := startNode(t)
	for path, code := range map[string]string{"/no/such/route": api.CodeRouteUnknown, "/v1/models/nosuch": api.CodeModelUnknown} {
		resp, body := get(t, "http://"+n.APIAddr()+path)
		var e api.Error
		if resp.StatusCode != 404 || json.Unmarshal(body, &e) != nil || e.Code != code || e.Message == "" {
			t.Errorf("GET %s: %d %s, want 404 with code %s", path, resp.StatusCode, body, code)
		}
	}
}

func TestConfigValidation(t *testing.T) {
	cases := map[string]Config{
		"listen":    {ListenAddrs: []string{"not-a-multiaddr"}},
		"bootstrap": {Bootstrap: []string{"/ip4/127.0.0.1/tcp/1"}},
		"api":       {APIAddr: "nocolon"},
		"mesh":      {Mesh: "bad/mesh"},
		"api token": {APIAddr: "0.0.0.0:0"},
		"device":    {Device: "tpu"},
		"threads":   {IntraOpThreads: -1},
		"inflight":  {MaxInflight: -1},
	}
	for name, c := range cases {
		c.DataDir = t.TempDir()
		if _, err := New(context.Background(), c); !errors.Is(err, ErrBadConfig) {
			t.Errorf("%s: err = %v, want ErrBadConfig", name, err)
		}
	}
}
