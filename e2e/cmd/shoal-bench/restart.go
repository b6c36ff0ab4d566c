package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/e2e/netsim"
	"github.com/shoal-mesh/shoal/e2e/procmesh"
	"github.com/shoal-mesh/shoal/internal/poll"
)

// runRestart measures how soon a `shoal run` process restarted on a
// collection of n documents answers its first query (the exact top hit):
// with its saved index reopened, and with no save (documents decoded,
// answered exactly while the graph is built in the background).
func runRestart(n, dim int, out string) error {
	nw, err := netsim.New("shoal-bench-restart")
	if err != nil {
		return err
	}
	defer nw.Close()
	dir, err := os.MkdirTemp("", "shoal-bench-restart-*")
	if err != nil {
		return err
	}
	// SHOAL_BENCH_KEEP keeps the peer's data dir and logs for a post-mortem.
	if os.Getenv("SHOAL_BENCH_KEEP") != "" {
		fmt.Fprintf(os.Stderr, "restart: data and logs kept in %s\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	m, err := procmesh.New(procmesh.Options{Net: nw, Sites: []int{1}, Dir: dir, Mesh: "bench",
		Args: func(int, []*procmesh.Peer) []string {
			return []string{"--log-level", "info", "--dht=false", "--mdns=false"}
		}})
	if err != nil {
		return err
	}
	defer m.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	p := m.Peers[0]
	if err := m.StartAll(ctx); err != nil {
		return err
	}
	r, err := p.Do(ctx, "POST", "/v1/collections", api.CreateCollectionRequest{Name: "big", Embedder: "client@v1", Dimension: dim})
	if err != nil || r.Code != 201 {
		return fmt.Errorf("create collection: %v %v", r, err)
	}
	vecs, ingest, err := ingestDocs(ctx, p, n, dim)
	if err != nil {
		return err
	}
	stopStart := time.Now()
	if err := p.Stop(); err != nil {
		return err
	}
	stop := time.Since(stopStart)
	indexBytes, _ := procmesh.DirBytes(filepath.Join(p.DataDir, "index"))
	storeBytes, _ := procmesh.DirBytes(p.DataDir)
	storeBytes -= indexBytes

	reopened, err := timeRestart(ctx, p, vecs, n/3)
	if err != nil {
		return err
	}
	how, _ := graphsMetric(ctx, p)
	fmt.Fprintf(os.Stderr, "restart: the restarted peer's log:\n%s\n", p.LogTail(60))
	if err := p.Stop(); err != nil {
		return err
	}
	os.RemoveAll(filepath.Join(p.DataDir, "index")) // no save: as a first start after an upgrade, or a crash before any
	fresh, err := timeRestart(ctx, p, vecs, 2*n/3)
	if err != nil {
		return err
	}
	buildStart := time.Now()
	if err := poll.Wait(ctx, 200*time.Millisecond, func() error {
		st, err := p.Status(ctx)
		if err != nil {
			return err
		}
		if len(st.Progress) > 0 {
			return fmt.Errorf("still building: %+v", st.Progress)
		}
		return nil
	}); err != nil {
		return err
	}
	built := fresh + time.Since(buildStart)

	var b bytes.Buffer
	fmt.Fprintf(&b, "### Retrieval: restart of a large collection\n\n")
	fmt.Fprintf(&b, "Measured %s on %s. One `shoal run` process, %d documents of %d random Gaussian components written\n", time.Now().UTC().Format("2006-01-02"), machine(), n, dim)
	fmt.Fprintf(&b, "through the API (%d per request; indexed as they were written, in %.0f s), stopped with SIGTERM (%.1f s, saving the index:\n", api.MaxBatchDocs, ingest.Seconds(), stop.Seconds())
	fmt.Fprintf(&b, "%.0f MiB beside %.0f MiB of Badger), started again. Time from the process start to its first exact answer (the\n", float64(indexBytes)/(1<<20), float64(storeBytes)/(1<<20))
	fmt.Fprintf(&b, "query is a stored document's own vector; the answer must name it).\n\n")
	fmt.Fprintln(&b, "| start | first exact answer | index |")
	fmt.Fprintln(&b, "|---|---:|---|")
	fmt.Fprintf(&b, "| saved index present | %.2f s | reopened (%s) |\n", reopened.Seconds(), how)
	fmt.Fprintf(&b, "| no saved index | %.2f s | documents decoded, answered exactly; graph built in the background by %.0f s |\n\n", fresh.Seconds(), built.Seconds())
	fmt.Print(b.String())
	if out != "" {
		return writeSection(out, "restart", b.String())
	}
	return nil
}

// ingestDocs writes n documents of random vectors and waits until the
// index holds them; it returns the vectors and how long that took.
func ingestDocs(ctx context.Context, p *procmesh.Peer, n, dim int) ([][]float32, time.Duration, error) {
	rng := rand.New(rand.NewSource(9))
	vecs := make([][]float32, n)
	start := time.Now()
	var tok string
	for first := 0; first < n; first += api.MaxBatchDocs {
		var docs []api.DocRequest
		for i := first; i < min(first+api.MaxBatchDocs, n); i++ {
			vecs[i] = make([]float32, dim)
			for j := range vecs[i] {
				vecs[i][j] = float32(rng.NormFloat64())
			}
			docs = append(docs, api.DocRequest{ID: fmt.Sprintf("v%07d", i), Text: "doc", Vector: vecs[i]})
		}
		r, err := p.Do(ctx, "POST", "/v1/collections/big/docs", api.DocsRequest{Docs: docs})
		if err != nil || r.Code != 200 {
			return nil, 0, fmt.Errorf("write documents: %v %v", r, err)
		}
		tok = r.Header.Get(api.HeaderToken)
		if first%(20*api.MaxBatchDocs) == 0 {
			fmt.Fprintf(os.Stderr, "restart: %d of %d documents written\n", first, n)
		}
	}
	// A query after the last write's token waits for the index to hold it.
	err := poll.Wait(ctx, time.Second, func() error {
		return exactAnswer(ctx, p, vecs, n-1, api.HeaderAfter, tok)
	})
	return vecs, time.Since(start), err
}

// timeRestart starts p and returns how long until it answers a query for
// document i with i.
func timeRestart(ctx context.Context, p *procmesh.Peer, vecs [][]float32, i int) (time.Duration, error) {
	start := time.Now()
	if err := p.Start(ctx); err != nil {
		return 0, err
	}
	err := poll.Wait(ctx, 10*time.Millisecond, func() error { return exactAnswer(ctx, p, vecs, i) })
	return time.Since(start), err
}

func exactAnswer(ctx context.Context, p *procmesh.Peer, vecs [][]float32, i int, hdr ...string) error {
	k := 1
	r, err := p.Do(ctx, "POST", "/v1/collections/big/query", api.QueryRequest{Vector: vecs[i], K: &k}, hdr...)
	if err != nil {
		return err
	}
	var out api.QueryResponse
	if r.Code != 200 || r.JSON(&out) != nil || len(out.Results) != 1 {
		return fmt.Errorf("query: %s", r)
	}
	if want := fmt.Sprintf("v%07d", i); out.Results[0].ID != want {
		return fmt.Errorf("query for %s answered %s", want, out.Results[0].ID)
	}
	return nil
}

// graphsMetric reads shoal_rag_index_graphs_total from /metrics.
func graphsMetric(ctx context.Context, p *procmesh.Peer) (string, error) {
	r, err := p.Do(ctx, "GET", "/metrics", nil)
	if err != nil {
		return "", err
	}
	var lines []string
	for _, l := range strings.Split(string(r.Body), "\n") {
		if strings.HasPrefix(l, "shoal_rag_index_graphs_total") {
			lines = append(lines, strings.TrimPrefix(l, "shoal_rag_index_graphs_total"))
		}
	}
	return strings.Join(lines, ", "), nil
}
