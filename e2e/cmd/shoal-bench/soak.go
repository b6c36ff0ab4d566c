package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/e2e/netsim"
	"github.com/shoal-mesh/shoal/e2e/procmesh"
	"github.com/shoal-mesh/shoal/internal/poll"
)

// soakResult is what one peer's history costs.
type soakResult struct {
	writes  int
	write   time.Duration
	dataDir int64         // bytes, without the saved index
	rebuild time.Duration // unclean start: process start to API answering
	height  uint64
}

// runSoak measures whether disk use and the unclean-start rebuild follow
// the live data or the write count (issue 15's soak): one `shoal run`
// rewrites docs documents until rewrites writes were made, batch per
// request; a second loads only the final state. Each is then killed
// (SIGKILL, so the next start rebuilds the state from the DAG) and the time
// to its first API answer measured.
func runSoak(docs, rewrites, batch int, out string) error {
	soak, err := soakPeer("soak", docs, rewrites, batch)
	if err != nil {
		return err
	}
	fresh, err := soakPeer("fresh", docs, docs, batch)
	if err != nil {
		return err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "### Bounded history: %d rewrites of %d documents\n\n", rewrites, docs)
	fmt.Fprintf(&b, "Measured %s on %s. One `shoal run` process per row, documents written through the API %d per request\n", time.Now().UTC().Format("2006-01-02"), machine(), batch)
	fmt.Fprintf(&b, "(8-d client vectors, ~100-byte texts); then SIGKILL and a start, which rebuilds the replicated state from the DAG.\n")
	fmt.Fprintf(&b, "Goal (issue 15): the soaked peer within a small constant factor of the fresh one. go-ds-crdt keeps every delta,\n")
	fmt.Fprintf(&b, "so this measures the history Shoal does not yet compact.\n\n")
	fmt.Fprintln(&b, "| peer | writes | write time | DAG height | data dir | unclean start to API |")
	fmt.Fprintln(&b, "|---|---:|---:|---:|---:|---:|")
	for _, r := range []struct {
		name string
		s    soakResult
	}{{"rewritten", soak}, {"final state only", fresh}} {
		fmt.Fprintf(&b, "| %s | %d | %.1f s | %d | %.1f MiB | %.2f s |\n", r.name, r.s.writes, r.s.write.Seconds(), r.s.height, float64(r.s.dataDir)/(1<<20), r.s.rebuild.Seconds())
	}
	fmt.Fprintf(&b, "| ratio | %.0f× | | | %.1f× | %.1f× |\n\n", float64(soak.writes)/float64(fresh.writes),
		float64(soak.dataDir)/float64(max(fresh.dataDir, 1)), soak.rebuild.Seconds()/max(fresh.rebuild.Seconds(), 0.001))
	fmt.Print(b.String())
	if out != "" {
		return writeSection(out, "soak", b.String())
	}
	return nil
}

// soakPeer writes writes documents, cycling over docs ids, on a fresh
// peer, and measures its data dir and an unclean start.
func soakPeer(name string, docs, writes, batch int) (soakResult, error) {
	res := soakResult{writes: writes}
	nw, err := netsim.New("shoal-bench-" + name)
	if err != nil {
		return res, err
	}
	defer nw.Close()
	dir, err := os.MkdirTemp("", "shoal-bench-soak-*")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	m, err := procmesh.New(procmesh.Options{Net: nw, Sites: []int{1}, Dir: dir, Mesh: "soak",
		Args: func(int, []*procmesh.Peer) []string {
			return []string{"--log-level", "info", "--dht=false", "--mdns=false"}
		}})
	if err != nil {
		return res, err
	}
	defer m.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Minute)
	defer cancel()
	p := m.Peers[0]
	if err := m.StartAll(ctx); err != nil {
		return res, err
	}
	if r, err := p.Do(ctx, "POST", "/v1/collections", api.CreateCollectionRequest{Name: "soak", Embedder: "client@v1", Dimension: 8}); err != nil || r.Code != 201 {
		return res, fmt.Errorf("create collection: %v %v", r, err)
	}
	start := time.Now()
	for w := 0; w < writes; {
		var reqs []api.DocRequest
		for ; len(reqs) < batch && w < writes; w++ {
			i := w % docs
			vec := make([]float32, 8)
			for j := range vec {
				vec[j] = float32((w+j)%97) + 1
			}
			reqs = append(reqs, api.DocRequest{ID: fmt.Sprintf("d%05d", i), Text: fmt.Sprintf("document %d, version %d of a note that is rewritten again and again", i, w/docs), Vector: vec})
		}
		if r, err := p.Do(ctx, "POST", "/v1/collections/soak/docs", api.DocsRequest{Docs: reqs}); err != nil || r.Code != 200 {
			return res, fmt.Errorf("write: %v %v", r, err)
		}
		if w%(writes/10+1) < batch {
			fmt.Fprintf(os.Stderr, "soak %s: %d of %d writes\n", name, w, writes)
		}
	}
	res.write = time.Since(start)
	if st, err := p.Status(ctx); err == nil {
		res.height = st.Height
	}
	if err := p.Stop(); err != nil {
		return res, err
	}
	all, _ := dirBytes(p.DataDir)
	index, _ := dirBytes(filepath.Join(p.DataDir, "index"))
	res.dataDir = all - index
	// Start, then SIGKILL once it answers: the next start is unclean.
	if err := p.Start(ctx); err != nil {
		return res, err
	}
	p.Kill()
	began := time.Now()
	if err := p.Start(ctx); err != nil {
		return res, err
	}
	if err := poll.Wait(ctx, 10*time.Millisecond, func() error {
		_, err := p.Status(ctx)
		return err
	}); err != nil {
		return res, err
	}
	res.rebuild = time.Since(began)
	fmt.Fprintf(os.Stderr, "soak %s: %+v\n", name, res)
	return res, p.Stop()
}
