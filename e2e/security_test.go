package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/shoal-mesh/shoal/api"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoal-mesh/shoal/e2e/testmesh"
	"github.com/shoal-mesh/shoal/peer"
)

// TestAPITokenGuardsWrites: with an API token, every state-changing
// request needs it; reads (inference and queries included) do not.
func TestAPITokenGuardsWrites(t *testing.T) {
	m := startMesh(t, 1, func(_ int, c *peer.Config) { c.APIToken = "s3cret-token" })
	n := m.Node(0)
	v1, _ := clsModels(t)
	url := baseURL(n) + "/v1/models/cls/versions/v1?" + onnxQuery + "&activate=true"
	for _, auth := range []string{"", "Bearer wrong", "s3cret-token", "Basic s3cret-token"} {
		res := do(t, http.MethodPut, url, v1, "Authorization", auth)
		if res.code != http.StatusUnauthorized || res.errCode() != api.CodeAuthRequired || res.header.Get("WWW-Authenticate") == "" {
			t.Errorf("Authorization %q: %d %s", auth, res.code, res.body)
		}
	}
	if res := do(t, "GET", baseURL(n)+"/v1/models", nil); res.code != 200 || !strings.Contains(string(res.body), `"models": []`) {
		t.Errorf("refused writes changed state or reads need a token: %d %s", res.code, res.body)
	}
	res := do(t, http.MethodPut, url, v1, "Authorization", "Bearer s3cret-token")
	if res.code != http.StatusCreated {
		t.Fatalf("with the token: %d %s", res.code, res.body)
	}
	for _, w := range []struct{ method, path, body string }{
		{"POST", "/v1/models/cls/rollback", ``},
		{"POST", "/v1/cache/flush", ``},
		{"POST", "/v1/collections", `{"name":"c","embedder":"e@v1"}`},
		{"DELETE", "/v1/collections/c/docs/x", ``},
	} {
		if res := do(t, w.method, baseURL(n)+w.path, []byte(w.body)); res.code != http.StatusUnauthorized {
			t.Errorf("%s %s without a token: %d", w.method, w.path, res.code)
		}
	}
	eventually(t, "inference needs no token", func() error {
		if r := inferHTTP(t, n, "cls", "", clsBody(1)); r.code != 200 {
			return fmt.Errorf("%d %s", r.code, r.body)
		}
		return nil
	})
}

// TestPrivateNetworkKeepsStrangersOut: peers sharing a PSK form a mesh; a
// peer with another key, or none, cannot connect to them at all.
func TestPrivateNetworkKeepsStrangersOut(t *testing.T) {
	dir := t.TempDir()
	keyFile := func(name string) string {
		b, err := peer.NewPSK()
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		os.WriteFile(p, b, 0o600)
		return p
	}
	ours, theirs := keyFile("ours.key"), keyFile("theirs.key")
	m := startMesh(t, 2, func(_ int, c *peer.Config) { c.PSKFile = ours })
	for _, a := range m.Node(0).Addrs() {
		if strings.Contains(a, "quic") {
			t.Errorf("private peer listens on QUIC: %s", a)
		}
	}
	boot := m.Node(0).Addrs()[0]
	start := func(psk string, gater *testmesh.Gater) *peer.Node {
		cfg := peer.Config{DataDir: t.TempDir(), APIAddr: "127.0.0.1:0", ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"},
			Mesh: "testmesh", NoSync: true, PSKFile: psk, Bootstrap: []string{boot}, Version: "test",
			ORTLibrary: testmesh.RepoFile("deps/onnxruntime/libonnxruntime.so"), Logger: slog.New(slog.DiscardHandler)}
		if gater != nil {
			cfg.Gater = gater
		}
		n, err := peer.New(t.Context(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		return n
	}
	for name, psk := range map[string]string{"another key": theirs, "no key": ""} {
		// The stranger's gater lets everything through and counts its
		// attempts to dial the bootstrap peer.
		dials := &testmesh.Gater{}
		stranger := start(psk, dials)
		eventually(t, name+": stranger tries the bootstrap peer several times", func() error {
			if d := dials.Dials(m.Node(0).ID()); d < 3 {
				return fmt.Errorf("%d dials", d)
			}
			return nil
		})
		if c := len(stranger.Host().Network().Peers()); c != 0 {
			t.Errorf("%s: stranger connected to %d peers", name, c)
		}
		if len(m.Node(0).Host().Network().ConnsToPeer(stranger.ID())) != 0 {
			t.Errorf("%s: the mesh accepted the stranger", name)
		}
	}
	friend := start(ours, nil)
	eventually(t, "a peer with the key joins", func() error {
		if len(friend.Host().Network().ConnsToPeer(m.Node(0).ID())) == 0 {
			return fmt.Errorf("not connected")
		}
		return nil
	})
	// Bad key files are a clear configuration error.
	bad := filepath.Join(dir, "bad.key")
	os.WriteFile(bad, []byte("not a key"), 0o600)
	cfg := peer.Config{DataDir: t.TempDir(), APIAddr: "127.0.0.1:0", ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"}, PSKFile: bad}
	if _, err := peer.New(t.Context(), cfg); !errors.Is(err, peer.ErrBadConfig) || !strings.Contains(err.Error(), "swarm key") {
		t.Errorf("bad key file: %v", err)
	}
}

// TestUntrustedPeersWritesAreInvisible: peer 1 reaches the mesh, but
// peer 0 does not trust its publisher key. Whatever peer 1 writes — a new
// document, an overwrite of peer 0's, a delete of another, a cache flush
// — replicates to peer 0 (the CRDT converges underneath) and is never
// shown there: not read, not queried, not after a restart, and counted as
// untrusted. Peer 1, which trusts both, sees everything; and peer 0's
// saved index still reopens, since what events and start-up scans admit
// is the same.
func TestUntrustedPeersWritesAreInvisible(t *testing.T) {
	m := startMesh(t, 2, func(i int, c *peer.Config) {
		if i == 0 {
			c.Trusted = nil // peer 0 trusts its own key only
		}
	})
	put := func(n *peer.Node, id, text string, vec []float32, tok string) string {
		t.Helper()
		body, _ := json.Marshal(api.DocRequest{Text: text, Vector: vec})
		res := do(t, http.MethodPut, baseURL(n)+"/v1/collections/notes/docs/"+id, body, api.HeaderAfter, tok)
		if res.code != http.StatusOK {
			t.Fatalf("put %s: %d %s", id, res.code, res.body)
		}
		return res.header.Get(api.HeaderToken)
	}
	shared, planted := []float32{1, 0, 0, 0}, []float32{0, 1, 0, 0}
	body, _ := json.Marshal(api.CreateCollectionRequest{Name: "notes", Embedder: "client@v1", Dimension: 4})
	res := do(t, http.MethodPost, baseURL(m.Node(0))+"/v1/collections", body)
	if res.code != http.StatusCreated {
		t.Fatalf("create collection: %d %s", res.code, res.body)
	}
	tok := put(m.Node(0), "shared", "written by peer 0", shared, res.header.Get(api.HeaderToken))
	tok = put(m.Node(1), "shared", "overwritten by peer 1", shared, tok)
	tok = put(m.Node(1), "planted", "planted by peer 1", planted, tok)
	tok = put(m.Node(0), "kept", "kept by peer 0", shared, tok)
	if res := do(t, http.MethodDelete, baseURL(m.Node(1))+"/v1/collections/notes/docs/kept", nil, api.HeaderAfter, tok); res.code != http.StatusOK {
		t.Fatalf("peer 1 deletes kept: %d %s", res.code, res.body)
	}
	if res := do(t, http.MethodPost, baseURL(m.Node(1))+"/v1/cache/flush", nil); res.code != http.StatusOK {
		t.Fatalf("flush: %d %s", res.code, res.body)
	}

	untrusted := map[string]string{"reason": "untrusted"}
	eventually(t, "peer 0 has refused peer 1's four records", func() error {
		if v := metricValue(t, m.Node(0), "shoal_rejected_records_total", untrusted); v != 4 {
			return fmt.Errorf("shoal_rejected_records_total{reason=untrusted} = %v", v)
		}
		return nil
	})
	check := func(when string) {
		t.Helper()
		if res := do(t, "GET", baseURL(m.Node(0))+"/v1/collections/notes/docs/planted", nil); res.code != http.StatusNotFound {
			t.Errorf("%s: peer 0 reads the planted document: %d %s", when, res.code, res.body)
		}
		res := do(t, "GET", baseURL(m.Node(0))+"/v1/collections/notes/docs/shared", nil)
		if res.code != http.StatusOK || !strings.Contains(string(res.body), "written by peer 0") {
			t.Errorf("%s: peer 0 reads shared as %d %s, want its own text", when, res.code, res.body)
		}
		if res := do(t, "GET", baseURL(m.Node(0))+"/v1/collections/notes/docs/kept", nil); res.code != http.StatusOK {
			t.Errorf("%s: peer 1's delete of kept took effect on peer 0: %d %s", when, res.code, res.body)
		}
		eventually(t, when+": peer 0 answers queries", func() error {
			out, res := query(t, m.Node(0), "notes", api.QueryRequest{Vector: planted, K: ptr(5)})
			if res.code != http.StatusOK {
				return fmt.Errorf("%d %s", res.code, res.body)
			}
			if out.Index.Documents != 2 {
				t.Errorf("%s: peer 0 indexes %d documents, want shared and kept", when, out.Index.Documents)
			}
			for _, r := range out.Results {
				if r.ID == "planted" || strings.Contains(r.Text, "peer 1") {
					t.Errorf("%s: peer 0's query returned %+v", when, r)
				}
			}
			return nil
		})
	}
	check("live")
	if res := do(t, "GET", baseURL(m.Node(1))+"/v1/collections/notes/docs/planted", nil); res.code != http.StatusOK {
		t.Errorf("peer 1, which trusts itself, cannot read its document: %d %s", res.code, res.body)
	}

	if err := m.Stop(0); err != nil {
		t.Fatal(err)
	}
	if err := m.Restart(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	check("after a restart")
	if got := metricValue(t, m.Node(0), "shoal_rag_index_graphs_total", map[string]string{"how": "reopened"}); got != 1 {
		t.Errorf("saved index reopened after a clean restart: %v, want 1 (the stored records no longer match the save)", got)
	}

	// Trusting peer 1 (SIGHUP) shows its records to reads at once.
	if err := m.Node(0).Reload(peer.Reloadable{Trusted: []string{string(m.Node(1).Registry().Publisher().ID())}}); err != nil {
		t.Fatal(err)
	}
	if res := do(t, "GET", baseURL(m.Node(0))+"/v1/collections/notes/docs/planted", nil); res.code != http.StatusOK {
		t.Errorf("after trusting peer 1, peer 0 still does not read its document: %d %s", res.code, res.body)
	}
	if res := do(t, "GET", baseURL(m.Node(0))+"/v1/collections/notes/docs/kept", nil); res.code != http.StatusNotFound {
		t.Errorf("after trusting peer 1, peer 0 still reads the document peer 1 deleted: %d %s", res.code, res.body)
	}
}

// TestSlowClientsCannotStarveTheAPI: a crowd of Slowloris connections,
// each trickling header bytes, is cut off at the header timeout, and
// ordinary requests are answered promptly all the while.
func TestSlowClientsCannotStarveTheAPI(t *testing.T) {
	m := startMesh(t, 1, func(_ int, c *peer.Config) { c.APIHeaderTimeout = time.Second })
	n := m.Node(0)
	addr := strings.TrimPrefix(baseURL(n), "http://")
	const slow = 200
	closed := make(chan time.Duration, slow)
	for i := 0; i < slow; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		go func() {
			start := time.Now()
			c.Write([]byte("GET /v1/status HTTP/1.1\r\nHost: x\r\n"))
			for {
				time.Sleep(200 * time.Millisecond) // the trickle itself (Slowloris), not synchronisation
				if _, err := c.Write([]byte("X-Slow: 1\r\n")); err != nil {
					closed <- time.Since(start)
					return
				}
				if time.Since(start) > 10*time.Second {
					closed <- -1
					return
				}
			}
		}()
	}
	for i := 0; i < 5; i++ {
		start := time.Now()
		if res := do(t, "GET", baseURL(n)+"/v1/status", nil); res.code != 200 {
			t.Fatalf("status while slow clients hang on: %d", res.code)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("status took %v while slow clients hang on", d)
		}
		time.Sleep(100 * time.Millisecond) // spreads the probes over the attack, not synchronisation
	}
	for i := 0; i < slow; i++ {
		if d := <-closed; d < 0 {
			t.Fatal("a slow client was still connected after 10 s with a 1 s header timeout")
		}
	}
}
