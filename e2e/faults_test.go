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
	"github.com/shoal-mesh/shoal/api"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	ds "github.com/ipfs/go-datastore"

	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/e2e/history"
	"github.com/shoal-mesh/shoal/e2e/netsim"
	"github.com/shoal-mesh/shoal/e2e/procmesh"
	"github.com/shoal-mesh/shoal/internal/poll"
	"github.com/shoal-mesh/shoal/store"
)

// faultMesh starts len(sites) peer processes on a fresh namespace network.
func faultMesh(t *testing.T, prefix string, sites []int, opts ...func(*procmesh.Options)) (*netsim.Net, *procmesh.Mesh) {
	t.Helper()
	nw := netsim.Require(t, prefix)
	o := procmesh.Options{Net: nw, Sites: sites, Dir: t.TempDir(), Mesh: prefix}
	for _, f := range opts {
		f(&o)
	}
	return nw, startProcMesh(t, o)
}

// startProcMesh starts the processes of o and stops them when the test
// ends, logging each one's last lines if it failed.
func startProcMesh(t *testing.T, o procmesh.Options) *procmesh.Mesh {
	t.Helper()
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
	return m
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

// docWriter adds documents with client-side vectors, remembers which the
// peer acknowledged, and records every write and read in a history that
// check judges at the end (e2e/history).
type docWriter struct {
	mu    sync.Mutex
	acked []string
	tries int
	rev   int // requests made: each writes its documents' texts anew
	hist  history.History
}

func docVector(id string) []float32 {
	vec := make([]float32, faultDim)
	for i := range vec {
		vec[i] = float32(len(id)+i) + 1
	}
	return vec
}

func (w *docWriter) put(ctx context.Context, p *procmesh.Peer, id string) error {
	return w.putBatch(ctx, p, []string{id}, 0)
}

// putBatch writes ids in one request, each text padded to pad bytes.
func (w *docWriter) putBatch(ctx context.Context, p *procmesh.Peer, ids []string, pad int) error {
	var docs []api.DocRequest
	w.mu.Lock()
	w.rev++
	rev := w.rev
	w.mu.Unlock()
	for _, id := range ids {
		text := fmt.Sprintf("note %s r%d", id, rev)
		if pad > len(text) {
			text += strings.Repeat(".", pad-len(text))
		}
		docs = append(docs, api.DocRequest{ID: id, Text: text, Vector: docVector(id)})
	}
	w.mu.Lock()
	w.tries += len(ids)
	w.mu.Unlock()
	start := time.Now()
	var r *procmesh.Response
	var err error
	if len(docs) == 1 {
		r, err = p.Do(ctx, "PUT", "/v1/collections/notes/docs/"+ids[0], docs[0])
	} else {
		r, err = p.Do(ctx, "POST", "/v1/collections/notes/docs", api.DocsRequest{Docs: docs})
	}
	end := time.Now()
	var res api.DocsResult
	acked := err == nil && r.Code == 200 && r.JSON(&res) == nil
	for _, d := range docs {
		w.hist.AddWrite(history.Write{Peer: p.Index, Key: d.ID, Value: d.Text, Token: res.Token, Start: start, End: end, Acked: acked})
	}
	if err != nil {
		return err
	}
	if !acked {
		return fmt.Errorf("put %v: %s", ids, r)
	}
	w.mu.Lock()
	w.acked = append(w.acked, ids...)
	w.mu.Unlock()
	return nil
}

// read reads one document on p, as a client would, and records what p
// answered and the staleness it claimed.
func (w *docWriter) read(ctx context.Context, p *procmesh.Peer, id string) {
	start := time.Now()
	r, err := p.Do(ctx, "GET", "/v1/collections/notes/docs/"+id, nil)
	rd := history.Read{Peer: p.Index, Key: id, Start: start, End: time.Now()}
	if err == nil && (r.Code == 200 || r.Code == 404) {
		rd.Answered, rd.Found = true, r.Code == 200
		rd.Staleness, _ = strconv.ParseFloat(strings.TrimSuffix(r.Header.Get(api.HeaderStaleness), "s"), 64)
		var d struct {
			Text string `json:"text"`
		}
		if rd.Found && r.JSON(&d) == nil {
			rd.Value = d.Text
		}
	}
	w.hist.AddRead(rd)
}

// check collects every peer's final state (its state hash and each
// written document) and judges the history: no acknowledged write lost,
// one state, read-your-writes, no answer claiming a staleness below the
// truth. Violations fail the test.
func (w *docWriter) check(t *testing.T, ctx context.Context, peers []*procmesh.Peer) history.Report {
	t.Helper()
	var finals []history.Final
	hashes := finalHashes(ctx, peers)
	for i, p := range peers {
		f := history.Final{Peer: p.Index, StateHash: hashes[i], Keys: map[string]string{}}
		for _, id := range w.hist.Keys() {
			r, err := p.Do(ctx, "GET", "/v1/collections/notes/docs/"+id, nil)
			if err != nil {
				t.Fatal(err)
			}
			var d struct {
				Text string `json:"text"`
			}
			if r.Code == 200 && r.JSON(&d) == nil {
				f.Keys[id] = d.Text
			}
		}
		finals = append(finals, f)
	}
	rep := w.hist.Check(finals)
	t.Logf("history: %s", rep)
	if !rep.OK() {
		t.Errorf("the history checker found broken promises: %s", rep)
	}
	return rep
}

// finalHashes reads every peer's state hash, again until they agree (for
// up to half a minute): a fold written after the writes stopped changes
// the bytes every peer stores, not what they show, and the peers that
// merged it differ from those that have not yet for a moment. Whatever
// they still disagree on is the checker's to judge.
func finalHashes(ctx context.Context, peers []*procmesh.Peer) []string {
	hashes := make([]string, len(peers))
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_ = poll.Wait(wctx, 200*time.Millisecond, func() error {
		for i, p := range peers {
			st, err := p.Status(ctx)
			if err != nil {
				hashes[i] = "unreachable: " + err.Error()
				continue
			}
			hashes[i] = st.StateHash
		}
		for _, h := range hashes[1:] {
			if h != hashes[0] {
				return fmt.Errorf("state hashes %v", hashes)
			}
		}
		return nil
	})
	return hashes
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
	var took time.Duration
	if err := poll.Wait(ctx, 200*time.Millisecond, func() error {
		hashes := map[string][]int{}
		for _, p := range peers {
			st, err := p.Status(ctx)
			if err != nil {
				hashes["error: "+err.Error()] = append(hashes["error: "+err.Error()], p.Index)
				continue
			}
			hashes[st.StateHash] = append(hashes[st.StateHash], p.Index)
		}
		if len(hashes) != 1 {
			return fmt.Errorf("state hashes by peer %v", hashes)
		}
		took = time.Since(start)
		return nil
	}); err != nil {
		t.Fatalf("no convergence after %v: %v", time.Since(start).Round(time.Millisecond), err)
	}
	return took
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
	// Reads the history checker judged, and the promises it found broken.
	Reads      int `json:"reads_checked"`
	Violations int `json:"violations"`
}

// withHistory fills the row's losses, reads and violations from the
// checker's report.
func (r reliabilityRow) withHistory(rep history.Report) reliabilityRow {
	r.Lost, r.Reads, r.Violations = rep.Lost, rep.Answered, rep.Count
	return r
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
		if err := p.WaitFor(ctx, func(st api.Status) bool {
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
	for _, p := range m.Peers {
		mi, err := p.Model(ctx, "detector")
		if err != nil {
			t.Fatal(err)
		}
		if mi.Current == nil || mi.Current.Version != want.Version || mi.Current.Publisher != want.Publisher {
			t.Errorf("peer %d after heal: current %+v, want %s by %s (largest HLC, publisher)", p.Index, mi.Current, want.Version, want.Publisher)
		}
	}
	hist := w.check(t, ctx, m.Peers)
	record(t, nw, reliabilityRow{Scenario: "split 3|2, write both sides, heal", Peers: 5,
		Duration: time.Since(began).Seconds(), Faults: "partition {0,1,2}|{3,4}",
		Acked: len(w.ids()) + 2, Converge: converge.Seconds()}.withHistory(hist))
}

// waitServing waits until p serves model@version.
func waitServing(ctx context.Context, p *procmesh.Peer, model, version string) error {
	return p.WaitFor(ctx, func(st api.Status) bool {
		for _, ms := range st.Models {
			if ms.Name == model && ms.Serving == version {
				return true
			}
		}
		return false
	})
}

func hostsOf(ps []*procmesh.Peer) []*netsim.Host {
	var hs []*netsim.Host
	for _, p := range ps {
		hs = append(hs, p.Host)
	}
	return hs
}

func TestFaultDelayLoss(t *testing.T) {
	began := time.Now()
	nw, m := faultMesh(t, "shoal-lossy", []int{1, 1, 1, 1})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	createNotes(t, ctx, m.Peers[0])
	waitConverged(t, ctx, m.Peers)

	link := netsim.Link{Delay: 200 * time.Millisecond, Loss: 0.10}
	nw.SetLink(link)
	defer nw.SetLink(netsim.Link{})

	act, _ := pushVersion(t, ctx, m.Peers[0], "detector", "v1", 256<<10, true)
	var w docWriter
	for i := 0; i < 30; i++ {
		if err := w.put(ctx, m.Peers[1], fmt.Sprintf("d%02d", i)); err != nil {
			t.Fatal(err)
		}
	}
	acked := time.Now() // every write above happened before this instant

	// Until every peer has everything, watch for a peer that claims to be
	// fresh past the writes while it still lacks them. Its claim is
	// now − staleness: the instant up to which it says it has seen all.
	writeAt := act.HLC.Time()
	honest := func(p *procmesh.Peer) (caughtUp bool) {
		st, err := p.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		claimed := time.Now().Add(-time.Duration(st.StalenessSeconds * float64(time.Second)))
		r, err := p.Do(ctx, "GET", "/v1/models/detector", nil)
		if err != nil || (r.Code != 200 && r.Code != 404) {
			t.Fatalf("peer %d: %v %v", p.Index, r, err)
		}
		var mi api.ModelInfo
		if r.Code == 200 {
			if err := r.JSON(&mi); err != nil {
				t.Fatal(err)
			}
		}
		if mi.Current != nil && mi.Current.Version == "v1" {
			return true
		}
		// Behind on the activation: it must not claim freshness past the
		// moment the activation was written (50 ms for reading the clock).
		if claimed.After(writeAt.Add(50 * time.Millisecond)) {
			t.Errorf("peer %d lacks the activation written at %s but claims to be fresh up to %s (staleness %.2fs)",
				p.Index, writeAt.Format("15:04:05.000"), claimed.Format("15:04:05.000"), st.StalenessSeconds)
		}
		return false
	}
	// At most 2 minutes; waitConverged then judges whether they caught up.
	watchCtx, cancelWatch := context.WithTimeout(ctx, 2*time.Minute)
	rounds := 0
	_ = poll.Wait(watchCtx, 150*time.Millisecond, func() error {
		var behind []int
		for _, p := range m.Peers { // every peer, every round: each is watched
			if !honest(p) {
				behind = append(behind, p.Index)
			}
			// and read as a client would, judged by the history checker
			w.read(ctx, p, fmt.Sprintf("d%02d", rounds%30))
		}
		rounds++
		if len(behind) > 0 {
			return fmt.Errorf("peers %v lack the activation", behind)
		}
		return nil
	})
	cancelWatch()
	waitConverged(t, ctx, m.Peers)
	converge := time.Since(acked)
	// Reads once every peer has everything, too.
	for _, p := range m.Peers {
		for _, id := range w.ids() {
			w.read(ctx, p, id)
		}
	}
	hist := w.check(t, ctx, m.Peers)
	record(t, nw, reliabilityRow{Scenario: "200 ms delay + 10 % loss on every link, activate + 30 docs", Peers: 4,
		Duration: time.Since(began).Seconds(), Faults: "delay 200 ms, loss 10 %",
		Acked: len(w.ids()) + 1, Converge: converge.Seconds()}.withHistory(hist))
}

// metric reads one sample from a peer's /metrics.
func metric(t *testing.T, ctx context.Context, p *procmesh.Peer, series string) float64 {
	t.Helper()
	r := must(t, 200)(p.Do(ctx, "GET", "/metrics", nil))
	for _, line := range strings.Split(string(r.Body), "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			var v float64
			fmt.Sscan(rest, &v)
			return v
		}
	}
	return 0
}

// TestFaultWriterOfflineMidBranch is issue 15's silent-divergence hole in
// real processes: the writer's peers are down while it writes, come back,
// learn its newest head from a heartbeat, merge that small delta and,
// while they are still fetching the large delta below it, the writer
// drops off the network.
// They hold a branch merged over a hole. Until the writer returns they
// must not claim to be fresh (every read is judged by the history
// checker), and afterwards every peer has every acknowledged document.
func TestFaultWriterOfflineMidBranch(t *testing.T) {
	began := time.Now()
	nw, m := faultMesh(t, "shoal-midbr", []int{1, 1})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	writer, readers := m.Peers[0], m.Peers[1:]
	hosts := hostsOf(m.Peers)
	createNotes(t, ctx, writer)
	waitConverged(t, ctx, m.Peers)

	var w docWriter
	ids, _ := halfDelivered(t, ctx, nw, &w, writer, readers)
	nw.Partition(hosts[:1], hosts[1:])
	cutAt := time.Now()
	holed := 0
	for _, p := range readers {
		if miss, err := missingDocs(ctx, p, ids); err == nil && len(miss) > 0 && len(miss) < len(ids) {
			holed++
		}
	}
	if holed == 0 {
		t.Fatal("no reader was left with part of the write: the large delta crossed before the cut")
	}

	// The writer is away for 15 s (three peer timeouts). Readers read
	// every document, as clients would; each answer is judged later.
	if err := poll.Wait(ctx, 100*time.Millisecond, func() error {
		for _, p := range readers {
			for _, id := range ids {
				w.read(ctx, p, id)
			}
		}
		if time.Since(cutAt) < 15*time.Second {
			return fmt.Errorf("writer away for %v", time.Since(cutAt))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, p := range readers {
		st, err := p.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if miss, _ := missingDocs(ctx, p, ids); len(miss) > 0 && st.StalenessSeconds < 15 {
			t.Errorf("peer %d lacks %d acknowledged documents of a writer gone for 15 s but reports staleness %.2fs", p.Index, len(miss), st.StalenessSeconds)
		}
	}

	// The writer returns.
	nw.SetLink(netsim.Link{})
	nw.Heal()
	back := time.Now()
	converge := waitConverged(t, ctx, m.Peers)
	for _, p := range readers {
		for _, id := range ids {
			w.read(ctx, p, id)
		}
	}
	hist := w.check(t, ctx, m.Peers)
	var healed float64
	for _, p := range readers {
		healed += metric(t, ctx, p, "shoal_crdt_healed_branches_total")
	}
	t.Logf("converged %.2fs after the writer returned; %d readers held a holed branch; %v branches walked again", converge.Seconds(), holed, healed)
	record(t, nw, reliabilityRow{Scenario: "writer offline mid-branch: the reader holds its head, not the 576 KiB delta below, 15 s", Peers: 2,
		Duration: time.Since(began).Seconds(), Faults: "reader down during the write, 300 ms links, writer cut while its delta is in flight",
		Acked: len(w.ids()), Converge: time.Since(back).Seconds()}.withHistory(hist))
}

// TestFaultCloseMidWalk: a reader holding the writer's head merged over
// the large delta it is still fetching is stopped cleanly (SIGTERM) and
// restarted. go-ds-crdt had marked the head processed without making it a
// head, and its repair walks only from heads; the restarted peer must see
// the hole, fetch the rest, and meanwhile answer honestly.
func TestFaultCloseMidWalk(t *testing.T) {
	began := time.Now()
	nw, m := faultMesh(t, "shoal-midwalk", []int{1, 1})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	writer, readers := m.Peers[0], m.Peers[1:]
	createNotes(t, ctx, writer)
	waitConverged(t, ctx, m.Peers)
	var w docWriter
	ids, holder := halfDelivered(t, ctx, nw, &w, writer, readers)
	if miss, _ := missingDocs(ctx, holder, ids); len(miss) == 0 {
		t.Fatal("the holder had the whole write before it was stopped: nothing was cut mid-walk")
	}
	if err := holder.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(ctx); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	// Read on every reader while the restarted one catches up over the
	// slow links, then with the links back to normal.
	_ = poll.Wait(ctx, 100*time.Millisecond, func() error {
		for _, p := range readers {
			for _, id := range ids {
				w.read(ctx, p, id)
			}
		}
		if time.Since(back) < 5*time.Second {
			return fmt.Errorf("reading")
		}
		return nil
	})
	nw.SetLink(netsim.Link{})
	converge := waitConverged(t, ctx, m.Peers)
	for _, p := range readers {
		for _, id := range ids {
			w.read(ctx, p, id)
		}
	}
	hist := w.check(t, ctx, m.Peers)
	record(t, nw, reliabilityRow{Scenario: "clean stop mid-walk: the reader holding the head, not the delta below, restarts", Peers: 2,
		Duration: time.Since(began).Seconds(), Faults: "SIGTERM while a 576 KiB delta crosses 300 ms links",
		Acked: len(w.ids()), Converge: converge.Seconds()}.withHistory(hist))
}

// TestFaultDivergedState: one peer's store gains a value no DAG block
// carries while it is stopped (what a lost write or a damaged disk
// leaves). Its heads equal its siblings', its state does not: the digests
// in the heartbeats show it, the peer reports it and rebuilds, and every
// peer ends on one state with every acknowledged document.
func TestFaultDivergedState(t *testing.T) {
	began := time.Now()
	nw, m := faultMesh(t, "shoal-diverge", []int{1, 1, 1})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	victim := m.Peers[2]
	createNotes(t, ctx, m.Peers[0])
	waitConverged(t, ctx, m.Peers)
	var w docWriter
	for i := 0; i < 10; i++ {
		if err := w.put(ctx, m.Peers[i%2], fmt.Sprintf("g%02d", i)); err != nil {
			t.Fatal(err)
		}
	}
	waitConverged(t, ctx, m.Peers)
	if err := victim.Stop(); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(store.Config{Dir: victim.DataDir})
	if err != nil {
		t.Fatal(err)
	}
	// go-ds-crdt's set layout (crdt.resetState and TestResetState rely on
	// the same): the value and the element of a key no block carries.
	key := "/shoal/rag/notes/docs/orphan"
	for k, v := range map[string]string{"/crdt/s/k" + key + "/v": `{"planted":true}`, "/crdt/s/s" + key + "/bafyorphan": ""} {
		if err := st.Datastore().Put(ctx, ds.NewKey(k), []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if err := victim.Start(ctx); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	reported := false
	if err := poll.Wait(ctx, 100*time.Millisecond, func() error {
		for _, p := range m.Peers {
			if st, err := p.Status(ctx); err == nil && len(st.Diverged) > 0 {
				reported = true
			}
		}
		if metric(t, ctx, victim, "shoal_state_rebuilds_total") < 1 {
			return fmt.Errorf("the victim has not rebuilt its state")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !reported {
		t.Error("no peer reported the divergence in /v1/status before the rebuild")
	}
	converge := waitConverged(t, ctx, m.Peers)
	for _, p := range m.Peers {
		for _, id := range w.ids() {
			w.read(ctx, p, id)
		}
	}
	hist := w.check(t, ctx, m.Peers)
	record(t, nw, reliabilityRow{Scenario: "a value no block carries planted in a stopped peer's store", Peers: 3,
		Duration: time.Since(began).Seconds(), Faults: "store edited while stopped: same heads, other state",
		Acked: len(w.ids()), Converge: time.Since(back).Seconds()}.withHistory(hist))
	_ = converge
}

// halfDelivered stops the readers, has the writer store one request of
// 12 documents of 48 KiB (go-ds-crdt cuts it into two deltas, the first
// over the 512 KiB a broadcast carries inline, the second — the head —
// small), slows every link, starts the readers again and returns as soon
// as one of them has the head's document: it then holds the head merged
// and is still fetching the large delta below it. Stopping the readers is
// what makes them miss the broadcast (across a partition TCP would
// deliver it once healed).
func halfDelivered(t *testing.T, ctx context.Context, nw *netsim.Net, w *docWriter, writer *procmesh.Peer, readers []*procmesh.Peer) (ids []string, holder *procmesh.Peer) {
	t.Helper()
	for i := 0; i < 12; i++ {
		ids = append(ids, fmt.Sprintf("m%02d", i))
	}
	for _, p := range readers {
		if err := p.Stop(); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.putBatch(ctx, writer, ids, 48<<10); err != nil {
		t.Fatal(err)
	}
	wst, err := writer.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	nw.SetLink(netsim.Link{Delay: 300 * time.Millisecond})
	for _, p := range readers {
		if err := p.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// Wait until a reader holds the head's document and every reader has
	// heard the writer announce its new heads (a reader that never heard
	// of a write cannot know it lacks it: see docs/consistency.md).
	head := ids[len(ids)-1]
	if err := poll.Wait(ctx, 20*time.Millisecond, func() error {
		holder = nil
		for _, p := range readers {
			if r, err := p.Do(ctx, "GET", "/v1/collections/notes/docs/"+head, nil); err == nil && r.Code == 200 && holder == nil {
				holder = p
			}
			if !heardHeads(ctx, p, writer.ID.String(), wst.Heads) {
				return fmt.Errorf("peer %d has not heard the writer's heads", p.Index)
			}
		}
		if holder == nil {
			return fmt.Errorf("no reader has %s", head)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return ids, holder
}

// heardHeads reports whether p has heard peer id announce every head in
// heads.
func heardHeads(ctx context.Context, p *procmesh.Peer, id string, heads []string) bool {
	st, err := p.Status(ctx)
	if err != nil {
		return false
	}
	for _, pi := range st.Peers {
		if pi.ID != id {
			continue
		}
		have := map[string]bool{}
		for _, h := range pi.Heads {
			have[h] = true
		}
		for _, h := range heads {
			if !have[h] {
				return false
			}
		}
		return true
	}
	return false
}

// TestFaultHostileGossip: a hostile host joins the mesh's gossip topics
// and, for 15 s, keeps sending garbage, oversize broadcasts, inline blocks
// that do not hash to their CIDs, heartbeats that speak for another peer
// and envelopes of an unknown version, while the peers take writes and
// reads. The topic validators refuse each kind (counted), nothing of it is
// relayed or reaches the state, and the history is clean.
func TestFaultHostileGossip(t *testing.T) {
	began := time.Now()
	nw, m := faultMesh(t, "shoal-hostile", []int{1, 1, 1})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	createNotes(t, ctx, m.Peers[0])
	waitConverged(t, ctx, m.Peers)
	done, out := startAttacker(t, nw, m, "-mesh", "shoal-hostile", "-for", "15s", "-impersonate", m.Peers[0].ID.String())
	var w docWriter
	converge := whileAttacked(t, ctx, m, &w, done, out, func(i int) error {
		if err := w.put(ctx, m.Peers[i%2], fmt.Sprintf("h%03d", i)); err != nil {
			return err
		}
		w.read(ctx, m.Peers[2], fmt.Sprintf("h%03d", i/2))
		return nil
	})
	for _, p := range m.Peers {
		for _, series := range []string{
			`shoal_pubsub_rejected_total{reason="malformed",topic="crdt"}`,
			`shoal_pubsub_rejected_total{reason="oversize",topic="crdt"}`,
			`shoal_pubsub_rejected_total{reason="mismatch",topic="crdt"}`,
			`shoal_pubsub_rejected_total{reason="version",topic="crdt"}`,
			`shoal_pubsub_rejected_total{reason="author",topic="heartbeat"}`,
		} {
			if v := metric(t, ctx, p, series); v == 0 {
				t.Errorf("peer %d: %s = 0", p.Index, series)
			}
		}
	}
	hist := w.check(t, ctx, m.Peers)
	t.Logf("attacker: %s", strings.TrimSpace(out.String()))
	record(t, nw, reliabilityRow{Scenario: "a hostile peer gossips garbage, oversize broadcasts, mismatched blocks, forged heartbeats for 15 s", Peers: 3,
		Duration: time.Since(began).Seconds(), Faults: strings.TrimSpace(out.String()) + ", 5 kinds",
		Acked: len(w.ids()), Converge: converge.Seconds()}.withHistory(hist))
}

// startAttacker runs shoal-attacker with args on a host of its own in nw,
// connected to every peer of m; the channel reports how it ended, the
// builder holds what it printed.
func startAttacker(t *testing.T, nw *netsim.Net, m *procmesh.Mesh, args ...string) (<-chan error, *strings.Builder) {
	t.Helper()
	ah, err := nw.AddHost(1)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range m.Peers {
		args = append(args, "-peer", p.Multiaddr())
	}
	bin, err := procmesh.Build("./e2e/cmd/shoal-attacker")
	if err != nil {
		t.Fatal(err)
	}
	cmd := ah.Command(bin, args...)
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	return done, out
}

// whileAttacked runs step(0), step(1), … 100 ms apart until the attacker
// ends (failing the test if it failed), waits for the peers to converge,
// reads every acknowledged document on every peer into w's history, and
// returns how long convergence took.
func whileAttacked(t *testing.T, ctx context.Context, m *procmesh.Mesh, w *docWriter, done <-chan error, out *strings.Builder, step func(i int) error) time.Duration {
	t.Helper()
	for i := 0; ; i++ {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("attacker: %v: %s", err, out.String())
			}
			converge := waitConverged(t, ctx, m.Peers)
			for _, p := range m.Peers {
				for _, id := range w.ids() {
					w.read(ctx, p, id)
				}
			}
			return converge
		default:
		}
		if err := step(i); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestFaultHostileRecords: a hostile host learns the documents' signed
// records from the peers' broadcasts and, for 15 s, publishes valid
// go-ds-crdt blocks on top of the DAG holding old versions replayed,
// versions with their text changed (forged, unsigned, or signed with its
// own key), versions moved to another document, and unsigned deletes,
// while trusted peers write every document twice and read them. Admission
// refuses each (counted by reason): every read answers what the trusted
// writers last wrote, and the history is clean.
func TestFaultHostileRecords(t *testing.T) {
	began := time.Now()
	nw, m := faultMesh(t, "shoal-records", []int{1, 1, 1})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	createNotes(t, ctx, m.Peers[0])
	waitConverged(t, ctx, m.Peers)
	done, out := startAttacker(t, nw, m, "-mesh", "shoal-records", "-for", "15s", "-every", "100ms", "-records")
	var w docWriter
	converge := whileAttacked(t, ctx, m, &w, done, out, func(i int) error {
		// Each document twice: the attacker replays the first version.
		if err := w.putBatch(ctx, m.Peers[i%2], []string{fmt.Sprintf("r%03d", i/2)}, 20*(i%2)); err != nil {
			return err
		}
		w.read(ctx, m.Peers[2], fmt.Sprintf("r%03d", i/4))
		return nil
	})
	for _, p := range m.Peers {
		for _, reason := range []string{"replayed", "forged", "unsigned", "untrusted"} {
			series := fmt.Sprintf(`shoal_rejected_records_total{reason=%q}`, reason)
			if v := metric(t, ctx, p, series); v == 0 {
				t.Errorf("peer %d: %s = 0", p.Index, series)
			}
		}
	}
	hist := w.check(t, ctx, m.Peers)
	t.Logf("attacker: %s", strings.TrimSpace(out.String()))
	record(t, nw, reliabilityRow{Scenario: "a hostile peer publishes replayed, forged, moved, unsigned and untrusted document records and unsigned deletes for 15 s", Peers: 3,
		Duration: time.Since(began).Seconds(), Faults: strings.TrimSpace(strings.TrimPrefix(out.String(), "sent ")),
		Acked: len(w.ids()), Converge: converge.Seconds()}.withHistory(hist))
}

// TestFaultUntrustedWriter: a peer whose key the others do not trust
// writes documents — new ones, overwrites of trusted ones, and deletes
// (signed tombstones) of other trusted ones — among trusted writes. Its records replicate (they are in the DAG) but no
// trusting peer ever shows them: reads answer what the trusted writers
// wrote, the history is clean, and each refused record is counted.
func TestFaultUntrustedWriter(t *testing.T) {
	began := time.Now()
	nw, m := faultMesh(t, "shoal-untrusted", []int{1, 1, 1}, func(o *procmesh.Options) { o.Untrusted = []int{2} })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	intruder, trusted := m.Peers[2], m.Peers[:2]
	createNotes(t, ctx, m.Peers[0])
	waitConverged(t, ctx, m.Peers)
	var w docWriter
	for i := 0; i < 20; i++ {
		if err := w.put(ctx, trusted[i%2], fmt.Sprintf("t%02d", i)); err != nil {
			t.Fatal(err)
		}
	}
	// The intruder adds its own documents and overwrites trusted ones.
	var bad docWriter
	for i := 0; i < 10; i++ {
		if err := bad.put(ctx, intruder, fmt.Sprintf("x%02d", i)); err != nil {
			t.Fatal(err)
		}
		if err := bad.putBatch(ctx, intruder, []string{fmt.Sprintf("t%02d", i)}, 100); err != nil {
			t.Fatal(err)
		}
	}
	for i := 10; i < 20; i++ {
		if err := poll.Wait(ctx, 100*time.Millisecond, func() error {
			r, err := intruder.Do(ctx, "DELETE", fmt.Sprintf("/v1/collections/notes/docs/t%02d", i), nil)
			if err == nil && r.Code != 200 {
				err = fmt.Errorf("%d %s", r.Code, r.Body)
			}
			return err
		}); err != nil {
			t.Fatalf("the intruder deletes t%02d: %v", i, err)
		}
	}
	// Trusted peers: the intruder's records arrive, and are counted.
	for _, p := range trusted {
		if err := poll.Wait(ctx, 200*time.Millisecond, func() error {
			if v := metric(t, ctx, p, `shoal_rejected_records_total{reason="untrusted"}`); v < 30 {
				return fmt.Errorf("peer %d counted %v untrusted records", p.Index, v)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		for _, id := range w.ids() {
			w.read(ctx, p, id)
		}
		for i := 0; i < 10; i++ {
			r, err := p.Do(ctx, "GET", fmt.Sprintf("/v1/collections/notes/docs/x%02d", i), nil)
			if err != nil || r.Code != 404 {
				t.Errorf("peer %d shows the intruder's x%02d: %v %v", p.Index, i, r, err)
			}
		}
	}
	converge := waitConverged(t, ctx, m.Peers)
	hist := w.check(t, ctx, trusted)
	record(t, nw, reliabilityRow{Scenario: "an untrusted peer writes 10 documents, overwrites 10 trusted ones and deletes 10 others", Peers: 3,
		Duration: time.Since(began).Seconds(), Faults: "a writer whose key is not in --trust",
		Acked: len(w.ids()), Converge: converge.Seconds()}.withHistory(hist))
}

// artifactBytesIn is what a peer fetched of artifacts, over the swarm and
// over bitswap.
func artifactBytesIn(t *testing.T, ctx context.Context, p *procmesh.Peer) float64 {
	t.Helper()
	return metric(t, ctx, p, `shoal_artifact_bytes_total{direction="in",source="swarm"}`) +
		metric(t, ctx, p, `shoal_artifact_bytes_total{direction="in",source="bitswap"}`)
}

func TestFaultKillDuringWritesAndDownload(t *testing.T) {
	began := time.Now()
	nw, m := faultMesh(t, "shoal-kill", []int{1, 1, 1})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	victim := m.Peers[2]
	createNotes(t, ctx, m.Peers[0])
	waitConverged(t, ctx, m.Peers)

	// A 48 MiB artifact, pulled by the victim over links slow enough that
	// the pull is still running when the victim dies.
	const size = 48 << 20
	pushVersion(t, ctx, m.Peers[0], "big", "v1", size, false)
	waitConverged(t, ctx, m.Peers)
	nw.SetLink(netsim.Link{Delay: 10 * time.Millisecond})
	must(t, 202)(victim.Do(ctx, "POST", "/v1/models/big/versions/v1/pull", nil))

	// A stream of acknowledged writes to the victim.
	var w docWriter
	stop := make(chan struct{})
	streamDone := make(chan struct{})
	go func() {
		defer close(streamDone)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if w.put(ctx, victim, fmt.Sprintf("k%04d", i)) != nil {
				return // the victim died mid-request: that write was never acknowledged
			}
		}
	}()
	// Kill once the pull is part-way and some writes were acknowledged.
	var before float64
	sawProgress := false
	if err := poll.Wait(ctx, 20*time.Millisecond, func() error {
		if st, err := victim.Status(ctx); err == nil {
			for _, p := range st.Progress {
				if p.Kind == "artifact_pull" && p.Name == "big@v1" && p.Total == size && p.Done > 0 && p.Done < size {
					sawProgress = true
				}
			}
		}
		before = artifactBytesIn(t, ctx, victim)
		if acked := len(w.ids()); before < size/4 || acked < 20 {
			return fmt.Errorf("%.0f bytes pulled, %d writes acknowledged", before, acked)
		}
		return nil
	}); err != nil {
		t.Fatalf("no progress before the kill: %v", err)
	}
	victim.Kill()
	close(stop)
	if !sawProgress {
		t.Error("/v1/status never showed the pull's progress")
	}
	<-streamDone
	acked := w.ids()
	if before >= size {
		t.Fatalf("the pull finished (%v bytes) before the kill; nothing to resume", before)
	}
	// The others keep serving while the victim is down.
	must(t, 200)(m.Peers[1].Do(ctx, "GET", "/v1/collections/notes/docs/"+acked[0], nil))

	nw.SetLink(netsim.Link{})
	if err := victim.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if miss, err := missingDocs(ctx, victim, acked); err != nil || len(miss) > 0 {
		t.Fatalf("restarted victim lost acknowledged writes %v (%v)", miss, err)
	}
	// The pull resumes: asked again, the victim fetches only what it lacked.
	restartAt := time.Now()
	must(t, 200)(victim.Do(ctx, "POST", "/v1/models/big/versions/v1/pull", nil))
	if err := poll.Wait(ctx, 100*time.Millisecond, func() error {
		mi, err := victim.Model(ctx, "big")
		if err != nil {
			t.Fatal(err)
		}
		if len(mi.Versions) == 1 && mi.Versions[0].Local != nil && mi.Versions[0].Local.State == "verified" {
			return nil
		}
		return fmt.Errorf("versions %+v", mi.Versions)
	}); err != nil {
		t.Fatalf("the pull never completed after restart: %v", err)
	}
	after := artifactBytesIn(t, ctx, victim)
	if after > size-before+(1<<20) {
		t.Errorf("after the restart the victim fetched %v bytes of %d, though it had %v before: the download did not resume", after, size, before)
	}
	t.Logf("pull: %.1f MiB before the kill, %.1f MiB after the restart (%.1fs)", before/(1<<20), after/(1<<20), time.Since(restartAt).Seconds())
	converge := waitConverged(t, ctx, m.Peers)
	hist := w.check(t, ctx, m.Peers)
	record(t, nw, reliabilityRow{Scenario: "kill -9 during acknowledged writes and a 48 MiB pull, restart", Peers: 3,
		Duration: time.Since(began).Seconds(), Faults: fmt.Sprintf("SIGKILL at %.0f%% of the pull", 100*before/size),
		Acked: len(acked), Converge: converge.Seconds()}.withHistory(hist))
}

func TestFaultLongOffline(t *testing.T) {
	began := time.Now()
	nw, m := faultMesh(t, "shoal-offline", []int{1, 1, 1})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	away := m.Peers[2]
	createNotes(t, ctx, m.Peers[0])
	waitConverged(t, ctx, m.Peers)
	if err := away.Stop(); err != nil {
		t.Fatal(err)
	}
	// Many versions and documents later…
	var acts []models.Activation
	var w docWriter
	for v := 1; v <= 15; v++ {
		a, _ := pushVersion(t, ctx, m.Peers[v%2], "detector", fmt.Sprintf("v%d", v), 32<<10, true)
		acts = append(acts, a)
		for i := 0; i < 20; i++ {
			if err := w.put(ctx, m.Peers[(v+1)%2], fmt.Sprintf("v%02d-%02d", v, i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitConverged(t, ctx, m.Peers[:2])
	back := time.Now()
	if err := away.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// Read on the rejoined peer while it catches up: until it has, its
	// answers must own up to the time it was away (the checker judges).
	ids := w.ids()
	for i := 0; i < 60; i++ {
		w.read(ctx, away, ids[(i*37)%len(ids)])
	}
	converge := waitConverged(t, ctx, m.Peers)
	want := winner(acts...)
	if mi, err := away.Model(ctx, "detector"); err != nil || mi.Current == nil || mi.Current.Version != want.Version {
		t.Errorf("rejoined peer's current %+v (%v), want %s", mi.Current, err, want.Version)
	}
	miss, err := missingDocs(ctx, away, w.ids())
	if err != nil {
		t.Fatal(err)
	}
	if len(miss) > 0 {
		t.Errorf("rejoined peer misses %d documents", len(miss))
	}
	// And it serves the current version's bytes once it has fetched them.
	if err := waitServing(ctx, away, "detector", want.Version); err != nil {
		t.Error(err)
	}
	hist := w.check(t, ctx, m.Peers)
	record(t, nw, reliabilityRow{Scenario: "peer offline through 15 versions and 300 docs, rejoins", Peers: 3,
		Duration: time.Since(began).Seconds(), Faults: "peer stopped, restarted",
		Acked: len(w.ids()) + len(acts), Converge: time.Since(back).Seconds()}.withHistory(hist))
	_ = converge
}

// TestFaultFoldsUnderRewrites is issue 15's bounded history under faults:
// two peers rewrite the same documents over and over while the mesh folds
// its history (fold_after 40) and prunes it two seconds later; a third
// peer reads throughout and is killed (SIGKILL) once history was pruned,
// so it rebuilds its state from folded history at its next start; a
// fourth joins only at the end, when the history below the folds is gone
// everywhere, and takes the state from them. The checker finds no
// acknowledged write lost, one state, and no answer staler than claimed.
func TestFaultFoldsUnderRewrites(t *testing.T) {
	began := time.Now()
	nw, m := faultMesh(t, "shoal-folds", []int{1, 1, 1, 1}, func(o *procmesh.Options) {
		o.Args = func(int, []*procmesh.Peer) []string {
			return []string{"--fold-after", "40", "--fold-prune-delay", "2s"}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	reader, late, holders := m.Peers[2], m.Peers[3], m.Peers[:3]
	if err := late.Stop(); err != nil {
		t.Fatal(err)
	}
	createNotes(t, ctx, m.Peers[0])
	waitConverged(t, ctx, holders)
	var ids []string
	for i := range 50 {
		ids = append(ids, fmt.Sprintf("f%02d", i))
	}
	var w docWriter
	const rounds = 40
	for round := range rounds {
		for b := 0; b < len(ids); b += 10 {
			if err := w.putBatch(ctx, m.Peers[(round+b/10)%2], ids[b:b+10], 0); err != nil {
				t.Fatal(err)
			}
		}
		w.read(ctx, reader, ids[(round*7)%len(ids)])
		if round == rounds/2 {
			// Once history was pruned everywhere, the reader dies and
			// rebuilds from what is left: folds and what came after.
			prunedEverywhere(t, ctx, holders, 1)
			reader.Kill()
			if err := reader.Start(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitConverged(t, ctx, holders)
	folds := prunedEverywhere(t, ctx, holders, 2)
	joined := time.Now()
	if err := late.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		w.read(ctx, late, ids[(i*11)%len(ids)])
	}
	waitConverged(t, ctx, m.Peers)
	hist := w.check(t, ctx, m.Peers)
	record(t, nw, reliabilityRow{Scenario: fmt.Sprintf("%d rewrites of %d documents on two peers while the history is folded and pruned; a reader killed after a prune, a peer joining when the history below the folds is gone", len(ids)*rounds, len(ids)), Peers: 4,
		Duration: time.Since(began).Seconds(), Faults: fmt.Sprintf("SIGKILL, restart; ≥ %.0f folds pruned by each", folds),
		Acked: len(w.ids()), Converge: time.Since(joined).Seconds()}.withHistory(hist))
}

// prunedEverywhere waits until each of peers has pruned under at least n
// folds, and returns how many each has at least (counters restart with a
// process: this counts since the last start).
func prunedEverywhere(t *testing.T, ctx context.Context, peers []*procmesh.Peer, n float64) float64 {
	t.Helper()
	if err := poll.Wait(ctx, 200*time.Millisecond, func() error {
		for _, p := range peers {
			if v := metric(t, ctx, p, "shoal_crdt_folds_pruned_total"); v < n {
				return fmt.Errorf("peer %d pruned under %.0f folds", p.Index, v)
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("history not pruned: %v", err)
	}
	folds := 0.0
	for i, p := range peers {
		if v := metric(t, ctx, p, "shoal_crdt_folds_pruned_total"); i == 0 || v < folds {
			folds = v
		}
	}
	return folds
}

// TestFaultSoak is issue 15's soak: two peers rewrite 1,000 documents
// until $SHOAL_SOAK_WRITES writes were made (10,000 in make test, with
// fold_after 2,000 so that it folds; make reliability runs 100,000 with
// the default fold_after), a third reads throughout. Then every peer is killed (SIGKILL) in turn and
// started again — the unclean start rebuilds its state from what the DAG
// still holds — and a fourth peer, stopped throughout, joins: it holds a
// fresh load of the final state, from the folds. Each peer's data dir and
// unclean start are reported beside the newcomer's; the checker finds no
// acknowledged write lost and every peer ends on one state.
func TestFaultSoak(t *testing.T) {
	began := time.Now()
	writes := 10000
	if v, err := strconv.Atoi(os.Getenv("SHOAL_SOAK_WRITES")); err == nil && v > 0 {
		writes = v
	}
	// The default fold_after, or one that folds a few times in a short
	// run (make test's).
	foldAfter := defaultFoldAfter
	if writes < 10*defaultFoldAfter {
		foldAfter = max(writes/5, 1000)
	}
	nw, m := faultMesh(t, "shoal-soak", []int{1, 1, 1, 1}, func(o *procmesh.Options) {
		o.Args = func(int, []*procmesh.Peer) []string {
			return []string{"--fold-prune-delay", "5s", "--fold-after", strconv.Itoa(foldAfter)}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	soaked, newcomer := m.Peers[:3], m.Peers[3]
	if err := newcomer.Stop(); err != nil {
		t.Fatal(err)
	}
	createNotes(t, ctx, m.Peers[0])
	waitConverged(t, ctx, soaked)
	const docs, batch = 1000, 10
	var w docWriter
	for n := 0; n < writes; n += batch {
		ids := make([]string, batch)
		for i := range ids {
			ids[i] = fmt.Sprintf("s%04d", (n+i)%docs)
		}
		if err := w.putBatch(ctx, m.Peers[(n/batch)%2], ids, 0); err != nil {
			t.Fatal(err)
		}
		if n%(20*batch) == 0 {
			w.read(ctx, soaked[2], ids[0])
		}
	}
	waitConverged(t, ctx, soaked)
	prunedEverywhere(t, ctx, soaked, 1)
	var starts []time.Duration
	for _, p := range soaked {
		p.Kill()
		began := time.Now()
		if err := p.Start(ctx); err != nil {
			t.Fatal(err)
		}
		starts = append(starts, time.Since(began))
	}
	joined := time.Now()
	if err := newcomer.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		w.read(ctx, newcomer, fmt.Sprintf("s%04d", (i*37)%docs))
	}
	converge := waitConverged(t, ctx, m.Peers)
	// The newcomer holds the state: it must also know it does, so every
	// branch it merged must end in folds, not in holes.
	fctx, fcancel := context.WithTimeout(ctx, 2*time.Minute)
	defer fcancel()
	if err := poll.Wait(fctx, 200*time.Millisecond, func() error {
		st, err := newcomer.Status(ctx)
		if err != nil {
			return err
		}
		if st.StalenessSeconds > 5 {
			return fmt.Errorf("newcomer staleness %.1f s", st.StalenessSeconds)
		}
		return nil
	}); err != nil {
		t.Errorf("the newcomer does not report itself fresh: %v", err)
	}
	hist := w.check(t, ctx, m.Peers)
	newcomer.Kill()
	began2 := time.Now()
	if err := newcomer.Start(ctx); err != nil {
		t.Fatal(err)
	}
	freshStart := time.Since(began2)
	var sizes []string
	for _, p := range m.Peers {
		if err := p.Stop(); err != nil {
			t.Fatal(err)
		}
		n, err := procmesh.DirBytes(p.DataDir)
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, fmt.Sprintf("%.1f", float64(n)/(1<<20)))
	}
	faults := fmt.Sprintf("SIGKILL of each peer, unclean starts %v, %v, %v against the newcomer's %v; data dirs %s MiB against its %s MiB",
		starts[0].Round(10*time.Millisecond), starts[1].Round(10*time.Millisecond), starts[2].Round(10*time.Millisecond),
		freshStart.Round(10*time.Millisecond), strings.Join(sizes[:3], " / "), sizes[3])
	t.Log(faults)
	record(t, nw, reliabilityRow{Scenario: fmt.Sprintf("soak: %d rewrites of %d documents on two peers (fold_after %d), each peer killed and started again, then a newcomer", writes, docs, foldAfter), Peers: 4,
		Duration: time.Since(began).Seconds(), Faults: faults, Acked: len(w.ids()), Converge: converge.Seconds()}.withHistory(hist))
	_ = joined
}

// defaultFoldAfter is shoal run's default fold_after.
const defaultFoldAfter = 10000

func TestFaultDiskFull(t *testing.T) {
	began := time.Now()
	var mounted string
	nw, m := faultMesh(t, "shoal-full", []int{1, 1}, func(o *procmesh.Options) {
		o.Prepare = func(i int, dir string) error {
			if i != 1 {
				return nil
			}
			if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=192m", "tmpfs", dir).CombinedOutput(); err != nil {
				return fmt.Errorf("mount tmpfs: %v: %s", err, out)
			}
			mounted = dir
			return nil
		}
	})
	t.Cleanup(func() {
		if mounted != "" {
			m.Close()
			exec.Command("umount", mounted).Run()
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	full := m.Peers[1]
	createNotes(t, ctx, full)
	var w docWriter
	for i := 0; i < 20; i++ {
		if err := w.put(ctx, full, fmt.Sprintf("f%02d", i)); err != nil {
			t.Fatal(err)
		}
	}
	waitConverged(t, ctx, m.Peers)

	// Fill the disk until less than the reserve is left.
	filler := filepath.Join(mounted, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	for {
		free := metric(t, ctx, full, "shoal_disk_free_bytes")
		if free < float64(store.DefaultMinFree)-(16<<20) {
			break
		}
		if _, err := f.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()

	// Writes get a clear error…
	r, err := full.Do(ctx, "PUT", "/v1/collections/notes/docs/refused", map[string]any{"text": "x", "vector": make([]float32, faultDim)})
	if err != nil || r.Code != http.StatusInsufficientStorage || !strings.Contains(string(r.Body), "disk full") {
		t.Fatalf("write on a full disk: %v %v, want 507 disk full", r, err)
	}
	var body map[string]any
	if r.JSON(&body) != nil || body["error"] == nil {
		t.Fatalf("507 without a JSON error body: %s", r.Body)
	}
	r, err = full.Do(ctx, "PUT", "/v1/models/detector/versions/v9", make([]byte, 1<<20))
	if err != nil || r.Code != http.StatusInsufficientStorage {
		t.Fatalf("push on a full disk: %v %v, want 507", r, err)
	}
	// …reads keep working…
	if miss, err := missingDocs(ctx, full, w.ids()); err != nil || len(miss) > 0 {
		t.Fatalf("reads on a full disk: missing %v (%v)", miss, err)
	}
	must(t, 200)(full.Do(ctx, "POST", "/v1/collections/notes/query", map[string]any{"vector": []float32{1, 2, 3, 4, 5, 6, 7, 8}, "k": 3}))
	// …and an artifact that does not fit is not fetched: neither by hand
	// nor when another peer activates it.
	pushVersion(t, ctx, m.Peers[0], "big", "v1", 24<<20, true)
	waitConverged(t, ctx, m.Peers)
	must(t, http.StatusInsufficientStorage)(full.Do(ctx, "POST", "/v1/models/big/versions/v1/pull", nil))
	if err := poll.Wait(ctx, 100*time.Millisecond, func() error {
		mi, err := full.Model(ctx, "big")
		if err != nil {
			t.Fatal(err)
		}
		if l := mi.Versions[0].Local; l != nil && l.State == "failed" {
			if !strings.Contains(l.Reason, "disk full") {
				t.Errorf("pull failed for another reason: %s", l.Reason)
			}
			return nil
		}
		return fmt.Errorf("local state %+v", mi.Versions[0].Local)
	}); err != nil {
		t.Fatalf("pull on a full disk never failed: %v", err)
	}

	// Space returns: writes work again, and nothing stored was harmed —
	// also across a restart, which reopens Badger.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if err := w.put(ctx, full, "after"); err != nil {
		t.Fatalf("write after space returned: %v", err)
	}
	if err := full.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := full.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if miss, err := missingDocs(ctx, full, w.ids()); err != nil || len(miss) > 0 {
		t.Fatalf("after recovery and restart: missing %v (%v)", miss, err)
	}
	converge := waitConverged(t, ctx, m.Peers)
	// With space back, the activated version is fetched and served.
	if err := waitServing(ctx, full, "big", "v1"); err != nil {
		t.Error(err)
	}
	hist := w.check(t, ctx, m.Peers)
	record(t, nw, reliabilityRow{Scenario: "data dir fills up (192 MiB tmpfs), space returns", Peers: 2,
		Duration: time.Since(began).Seconds(), Faults: "free space below the 64 MiB reserve",
		Acked: len(w.ids()), Converge: converge.Seconds()}.withHistory(hist))
}
