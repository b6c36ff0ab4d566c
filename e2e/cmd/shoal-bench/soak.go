package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
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
	folds   float64       // folds the peer wrote (and pruned under)
	pruned  float64       // delta blocks it pruned
	settle  time.Duration // from the last write until the last fold's history was pruned
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
	fmt.Fprintf(&b, "(8-d client vectors, ~100-byte texts), with the default `fold_after` (10,000 records); once the last fold's history is\n")
	fmt.Fprintf(&b, "pruned (*settled*, after the default 1 min `FoldPruneDelay`), stopped, measured, and SIGKILLed after a start, so the next start\n")
	fmt.Fprintf(&b, "rebuilds the replicated state from what the DAG still holds. Goal (issue 15): the soaked peer within a small constant\n")
	fmt.Fprintf(&b, "factor of the fresh one.\n\n")
	fmt.Fprintln(&b, "| peer | writes | write time | DAG height | folds | blocks pruned | settled after | data dir | unclean start to API |")
	fmt.Fprintln(&b, "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range []struct {
		name string
		s    soakResult
	}{{"rewritten", soak}, {"final state only", fresh}} {
		fmt.Fprintf(&b, "| %s | %d | %.1f s | %d | %.0f | %.0f | %.1f s | %.1f MiB | %.2f s |\n", r.name, r.s.writes, r.s.write.Seconds(), r.s.height,
			r.s.folds, r.s.pruned, r.s.settle.Seconds(), float64(r.s.dataDir)/(1<<20), r.s.rebuild.Seconds())
	}
	fmt.Fprintf(&b, "| ratio | %.0f× | | | | | | %.1f× | %.1f× |\n\n", float64(soak.writes)/float64(fresh.writes),
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
	// SHOAL_BENCH_KEEP keeps the peer's data dir and logs for a post-mortem.
	if os.Getenv("SHOAL_BENCH_KEEP") != "" {
		fmt.Fprintf(os.Stderr, "soak %s: data and logs kept in %s\n", name, dir)
	} else {
		defer os.RemoveAll(dir)
	}
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
	if err := settleFolds(ctx, p, &res); err != nil {
		return res, err
	}
	if st, err := p.Status(ctx); err == nil {
		res.height = st.Height
	}
	if err := p.Stop(); err != nil {
		return res, err
	}
	if os.Getenv("SHOAL_BENCH_SOAK_LS") != "" {
		ls, _ := exec.Command("du", "-ab", p.DataDir).CombinedOutput()
		fmt.Fprintf(os.Stderr, "%s\n", ls)
	}
	all, _ := procmesh.DirBytes(p.DataDir)
	index, _ := procmesh.DirBytes(filepath.Join(p.DataDir, "index"))
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

// settleFolds waits until p has pruned under every fold it wrote and no
// fold is due (fewer unfolded records than the default fold_after, which
// exceeds the documents the soak keeps): what an operator's peer looks
// like a minute after a burst of writes.
func settleFolds(ctx context.Context, p *procmesh.Peer, res *soakResult) error {
	began := time.Now()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	value := func(name string) (float64, error) {
		v, err := metricValues(ctx, p, name, "", "")
		return v[""], err
	}
	err := poll.Wait(ctx, time.Second, func() error {
		var vals [4]float64
		for i, name := range []string{"shoal_crdt_folds_total", "shoal_crdt_folds_pruned_total", "shoal_crdt_pruned_blocks_total", "shoal_crdt_unfolded_records"} {
			v, err := value(name)
			if err != nil {
				return err
			}
			vals[i] = v
		}
		res.folds, res.pruned = vals[0], vals[2]
		switch {
		case vals[3] >= defaultFoldAfter:
			return fmt.Errorf("%.0f unfolded records: a fold is due", vals[3])
		case vals[1] < vals[0]:
			return fmt.Errorf("%.0f of %.0f folds pruned", vals[1], vals[0])
		}
		return nil
	})
	res.settle = time.Since(began)
	return err
}

// defaultFoldAfter is `shoal run`'s default fold_after.
const defaultFoldAfter = 10000
