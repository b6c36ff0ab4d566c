package e2e

// Fault scenarios with real processes in real network namespaces (issue 7):
// each peer is a `shoal run` process on its own netsim host; the switch in
// this process partitions, delays and drops their packets. Each scenario
// records a row for docs/reliability.md (`make reliability`).

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/e2e/netsim"
	"github.com/shoal-mesh/shoal/e2e/procmesh"
	"github.com/shoal-mesh/shoal/peer"
)

// faultMesh starts len(sites) peer processes on a fresh namespace network.
func faultMesh(t *testing.T, prefix string, sites []int, opts ...func(*procmesh.Options)) (*netsim.Net, *procmesh.Mesh) {
	t.Helper()
	nw := netsim.Require(t, prefix)
	o := procmesh.Options{Net: nw, Sites: sites, Dir: t.TempDir(), Mesh: prefix}
	for _, f := range opts {
		f(&o)
	}
	m, err := procmesh.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.Close()
		if t.Failed() {
			for _, p := range m.Peers {
				t.Logf("peer %d log tail:\n%s", p.Index, p.LogTail(25))
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := m.StartAll(ctx); err != nil {
		t.Fatal(err)
	}
	return nw, m
}

// must fails the test unless the request answered want (200: any 2xx).
func must(t *testing.T, want int) func(*procmesh.Response, error) *procmesh.Response {
	return func(r *procmesh.Response, err error) *procmesh.Response {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		if r.Code != want && !(want == 200 && r.Code/100 == 2) {
			t.Fatalf("want %d, got %s", want, r)
		}
		return r
	}
}

// pushVersion publishes random bytes as model@version on p and returns
// the activation when activate is set.
func pushVersion(t *testing.T, ctx context.Context, p *procmesh.Peer, model, version string, size int, activate bool) (models.Activation, []byte) {
	t.Helper()
	data := make([]byte, size)
	rand.Read(data)
	r := must(t, 200)(p.Do(ctx, "PUT", fmt.Sprintf("/v1/models/%s/versions/%s?activate=%v", model, version, activate), data))
	var out struct {
		Activation models.Activation `json:"activation"`
	}
	if err := r.JSON(&out); err != nil {
		t.Fatal(err)
	}
	return out.Activation, data
}

func activate(t *testing.T, ctx context.Context, p *procmesh.Peer, model, version string) models.Activation {
	t.Helper()
	r := must(t, 200)(p.Do(ctx, "POST", "/v1/models/"+model+"/activate", map[string]string{"version": version}))
	var out struct {
		Activation models.Activation `json:"activation"`
	}
	if err := r.JSON(&out); err != nil {
		t.Fatal(err)
	}
	return out.Activation
}

// winner is design §1's effective current version among activations: the
// largest (HLC, publisher).
func winner(acts ...models.Activation) models.Activation {
	best := acts[0]
	for _, a := range acts[1:] {
		if c := a.HLC.Compare(best.HLC); c > 0 || (c == 0 && a.Publisher > best.Publisher) {
			best = a
		}
	}
	return best
}

const faultDim = 8

func createNotes(t *testing.T, ctx context.Context, p *procmesh.Peer) {
	t.Helper()
	must(t, 200)(p.Do(ctx, "POST", "/v1/collections", map[string]any{"name": "notes", "embedder": "client@v1", "dimension": faultDim}))
}

// docWriter adds documents with client-side vectors and remembers which
// the peer acknowledged.
type docWriter struct {
	mu    sync.Mutex
	acked []string
	tries int
}

func (w *docWriter) put(ctx context.Context, p *procmesh.Peer, id string) error {
	vec := make([]float32, faultDim)
	for i := range vec {
		vec[i] = float32(len(id)+i) + 1
	}
	w.mu.Lock()
	w.tries++
	w.mu.Unlock()
	r, err := p.Do(ctx, "PUT", "/v1/collections/notes/docs/"+id, map[string]any{"text": "note " + id, "vector": vec})
	if err != nil {
		return err
	}
	if r.Code != 200 {
		return fmt.Errorf("put %s: %s", id, r)
	}
	w.mu.Lock()
	w.acked = append(w.acked, id)
	w.mu.Unlock()
	return nil
}

func (w *docWriter) ids() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.acked...)
}

// missingDocs returns the ids p does not have.
func missingDocs(ctx context.Context, p *procmesh.Peer, ids []string) ([]string, error) {
	var miss []string
	for _, id := range ids {
		r, err := p.Do(ctx, "GET", "/v1/collections/notes/docs/"+id, nil)
		if err != nil {
			return nil, err
		}
		if r.Code != 200 {
			miss = append(miss, id)
		}
	}
	return miss, nil
}

// waitConverged waits until every running peer in peers reports the same
// state hash and returns how long that took.
func waitConverged(t *testing.T, ctx context.Context, peers []*procmesh.Peer) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		hashes := map[string][]int{}
		for _, p := range peers {
			st, err := p.Status(ctx)
			if err != nil {
				hashes["error: "+err.Error()] = append(hashes["error: "+err.Error()], p.Index)
				continue
			}
			hashes[st.StateHash] = append(hashes[st.StateHash], p.Index)
		}
		if len(hashes) == 1 {
			return time.Since(start)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no convergence after %v: state hashes by peer %v", time.Since(start).Round(time.Millisecond), hashes)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// reliabilityRow is one line of docs/reliability.md.
type reliabilityRow struct {
	Scenario string  `json:"scenario"`
	Peers    int     `json:"peers"`
	Duration float64 `json:"duration_s"`
	Faults   string  `json:"faults"`
	Acked    int     `json:"writes_acked"`
	Lost     int     `json:"writes_lost"`
	Converge float64 `json:"converge_s"`
	Packets  string  `json:"packets"`
}

// record appends a row to $SHOAL_RELIABILITY_OUT when set.
func record(t *testing.T, nw *netsim.Net, row reliabilityRow) {
	st := nw.Stats()
	row.Packets = fmt.Sprintf("%d delivered, %d cut, %d lost", st.Forwarded, st.DroppedCut, st.DroppedLoss)
	t.Logf("reliability: %+v", row)
	path := os.Getenv("SHOAL_RELIABILITY_OUT")
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Error(err)
		return
	}
	defer f.Close()
	b, _ := json.Marshal(row)
	f.Write(append(b, '\n'))
}

func TestFaultPartitionHeal(t *testing.T) {
	began := time.Now()
	nw, m := faultMesh(t, "shoal-split", []int{1, 1, 1, 1, 1})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sideA, sideB := m.Peers[:3], m.Peers[3:]

	base, _ := pushVersion(t, ctx, sideA[0], "detector", "v1", 64<<10, true)
	createNotes(t, ctx, sideA[0])
	waitConverged(t, ctx, m.Peers)

	nw.Partition(hostsOf(sideA), hostsOf(sideB))
	// Both sides publish and activate a new version and add documents.
	var acts []models.Activation
	a, _ := pushVersion(t, ctx, sideA[1], "detector", "v2", 64<<10, true)
	acts = append(acts, a)
	b, _ := pushVersion(t, ctx, sideB[0], "detector", "v3", 64<<10, true)
	acts = append(acts, b)
	var w docWriter
	for i := 0; i < 20; i++ {
		if err := w.put(ctx, sideA[2], fmt.Sprintf("a%02d", i)); err != nil {
			t.Fatal(err)
		}
		if err := w.put(ctx, sideB[1], fmt.Sprintf("b%02d", i)); err != nil {
			t.Fatal(err)
		}
	}
	// Inside each side the write spreads while the other side does not
	// see it.
	sideCtx, sideCancel := context.WithTimeout(ctx, 30*time.Second)
	waitConverged(t, sideCtx, sideA)
	waitConverged(t, sideCtx, sideB)
	sideCancel()
	for _, p := range sideA {
		if mi, err := p.Model(ctx, "detector"); err != nil || mi.Current == nil || mi.Current.Version != "v2" {
			t.Fatalf("side A peer %d during the split: current %+v (%v), want v2", p.Index, mi.Current, err)
		}
	}
	for _, p := range sideB {
		if mi, err := p.Model(ctx, "detector"); err != nil || mi.Current == nil || mi.Current.Version != "v3" {
			t.Fatalf("side B peer %d during the split: current %+v (%v), want v3", p.Index, mi.Current, err)
		}
	}

	// Each side notices the other is gone and lists it as unreachable
	// (staleness is measured against the peers a peer can hear; see
	// docs/consistency.md).
	for _, p := range m.Peers {
		other := sideB
		if p.Index >= 3 {
			other = sideA
		}
		gone := map[string]bool{}
		for _, o := range other {
			gone[o.ID.String()] = true
		}
		if err := p.WaitFor(ctx, func(st peer.Status) bool {
			for _, pi := range st.Peers {
				if gone[pi.ID] && pi.Reachable {
					return false
				}
			}
			return true
		}); err != nil {
			t.Fatalf("peer %d never reported the other side unreachable: %v", p.Index, err)
		}
	}

	nw.Heal()
	converge := waitConverged(t, ctx, m.Peers)
	want := winner(append(acts, base)...)
	lost := 0
	for _, p := range m.Peers {
		mi, err := p.Model(ctx, "detector")
		if err != nil {
			t.Fatal(err)
		}
		if mi.Current == nil || mi.Current.Version != want.Version || mi.Current.Publisher != want.Publisher {
			t.Errorf("peer %d after heal: current %+v, want %s by %s (largest HLC, publisher)", p.Index, mi.Current, want.Version, want.Publisher)
		}
		miss, err := missingDocs(ctx, p, w.ids())
		if err != nil {
			t.Fatal(err)
		}
		if len(miss) > 0 {
			t.Errorf("peer %d lost acknowledged documents %v", p.Index, miss)
			lost = max(lost, len(miss))
		}
	}
	record(t, nw, reliabilityRow{Scenario: "split 3|2, write both sides, heal", Peers: 5,
		Duration: time.Since(began).Seconds(), Faults: "partition {0,1,2}|{3,4}",
		Acked: len(w.ids()) + 2, Lost: lost, Converge: converge.Seconds()})
}

func hostsOf(ps []*procmesh.Peer) []*netsim.Host {
	var hs []*netsim.Host
	for _, p := range ps {
		hs = append(hs, p.Host)
	}
	return hs
}
