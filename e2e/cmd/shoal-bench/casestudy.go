package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"github.com/shoal-mesh/shoal/api"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/e2e/testmesh"
	"github.com/shoal-mesh/shoal/inference/onnxmodel"
	"github.com/shoal-mesh/shoal/internal/poll"
	"github.com/shoal-mesh/shoal/peer"
)

// caseResult is one run of the replayed workload.
type caseResult struct {
	cache                 bool
	requests, hits        int64
	dur                   time.Duration
	p50, p99              time.Duration
	activations           int
	lagP50, lagMax        time.Duration
	httpBytes, meshBytesI uint64
}

// zipfBodies makes k distinct binary OIP requests for the classifier.
func zipfBodies(k int) ([][]byte, int) {
	shape := []int64{1, 3, 48, 192}
	elems := 3 * 48 * 192
	var bodies [][]byte
	hdrLen := 0
	for j := 0; j < k; j++ {
		raw := make([]byte, 0, elems*4)
		for i := 0; i < elems; i++ {
			raw = binary.LittleEndian.AppendUint32(raw, math.Float32bits(float32(math.Sin(float64(i)*0.01+float64(j)))*0.5))
		}
		header := fmt.Sprintf(`{"inputs":[{"name":"x","shape":[%d,%d,%d,%d],"datatype":"FP32","parameters":{"binary_data_size":%d}}],"parameters":{"binary_data_output":true}}`,
			shape[0], shape[1], shape[2], shape[3], len(raw))
		hdrLen = len(header)
		bodies = append(bodies, append([]byte(header), raw...))
	}
	return bodies, hdrLen
}

// replay runs the workload on a two-peer mesh: clients send requests whose
// inputs follow a Zipf distribution to peer 1, while peer 0 activates a new
// version of the model every `every`.
func replay(cache bool, distinct int, skew float64, clients int, d, every time.Duration) (caseResult, error) {
	res := caseResult{cache: cache}
	dir, err := testmesh.TempDir()
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), d+5*time.Minute)
	defer cancel()
	m, err := testmesh.Start(ctx, testmesh.Options{N: 2, Dir: dir, Sync: true, Tweak: func(_ int, c *peer.Config) {
		if !cache {
			c.CacheBytes = -1
		}
		c.IntraOpThreads = 1
	}})
	if err != nil {
		return res, err
	}
	defer m.Close()
	model, err := testmesh.Model("ocr-cls.onnx")
	if err != nil {
		return res, err
	}
	origin, server := m.Node(0), m.Node(1)
	push := func(v int) (time.Time, error) {
		data := model
		if v > 1 {
			if data, err = onnxmodel.ScaleWeights(model, 1+float32(v)*0.001); err != nil {
				return time.Time{}, err
			}
		}
		start := time.Now()
		url := fmt.Sprintf("http://%s/v1/models/cls/versions/v%d?activate=true&media_type=%s", origin.APIAddr(), v, models.MediaTypeONNX)
		req, _ := http.NewRequest(http.MethodPut, url, bytes.NewReader(data))
		r, err := http.DefaultClient.Do(req)
		if err != nil {
			return start, err
		}
		io.Copy(io.Discard, r.Body)
		r.Body.Close()
		if r.StatusCode/100 != 2 {
			return start, fmt.Errorf("push v%d: %s", v, r.Status)
		}
		return start, nil
	}
	waitServing := func(v int, start time.Time) (time.Duration, error) {
		var lag time.Duration
		// A short interval: the lag measured is the invalidation's.
		if err := poll.Wait(ctx, 2*time.Millisecond, func() error {
			if got, _ := server.Serving("cls"); got != fmt.Sprintf("v%d", v) {
				return fmt.Errorf("serving %q", got)
			}
			lag = time.Since(start)
			return nil
		}); err != nil {
			return 0, fmt.Errorf("peer 1 never served v%d: %w", v, err)
		}
		return lag, nil
	}
	start, err := push(1)
	if err != nil {
		return res, err
	}
	if _, err := waitServing(1, start); err != nil {
		return res, err
	}
	bodies, hdrLen := zipfBodies(distinct)
	url := "http://" + server.APIAddr() + "/v2/models/cls/infer"
	meshIn := func() uint64 {
		return server.Blocks().Stats().BytesReceived + server.Artifacts().SwarmStats().BytesReceived
	}
	meshBefore := meshIn()

	var (
		requests, hits atomic.Int64
		httpBytes      atomic.Uint64
		mu             sync.Mutex
		lats           []time.Duration
		wg             sync.WaitGroup
		failed         atomic.Value
	)
	deadline := time.Now().Add(d) // how long the load runs, not a wait
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			z := rand.NewZipf(rand.New(rand.NewPCG(seed, seed+1)), skew, 1, uint64(distinct-1))
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			var local []time.Duration
			for time.Now().Before(deadline) {
				body := bodies[z.Uint64()]
				req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
				req.Header.Set("Inference-Header-Content-Length", strconv.Itoa(hdrLen))
				t0 := time.Now()
				r, err := client.Do(req)
				if err != nil {
					failed.Store(err)
					return
				}
				n, _ := io.Copy(io.Discard, r.Body)
				r.Body.Close()
				local = append(local, time.Since(t0))
				if r.StatusCode != 200 {
					failed.Store(fmt.Errorf("inference: %s", r.Status))
					return
				}
				requests.Add(1)
				httpBytes.Add(uint64(len(body)) + uint64(n))
				if r.Header.Get(api.HeaderCache) == "hit" {
					hits.Add(1)
				}
			}
			mu.Lock()
			lats = append(lats, local...)
			mu.Unlock()
		}(uint64(c + 1))
	}
	// Invalidations: a new version every `every`.
	var lags []time.Duration
	t0 := time.Now()
	for v := 2; time.Since(t0)+every <= d; v++ {
		time.Sleep(every) // paces the invalidations, not synchronisation
		start, err := push(v)
		if err != nil {
			return res, err
		}
		lag, err := waitServing(v, start)
		if err != nil {
			return res, err
		}
		lags = append(lags, lag)
	}
	wg.Wait()
	if err, ok := failed.Load().(error); ok && err != nil {
		return res, err
	}
	sort.Slice(lats, func(i, j int) bool { return lats[i] < lats[j] })
	sort.Slice(lags, func(i, j int) bool { return lags[i] < lags[j] })
	res.requests, res.hits, res.dur = requests.Load(), hits.Load(), d
	res.p50, res.p99 = testmesh.Percentile(lats, 50), testmesh.Percentile(lats, 99)
	res.activations = len(lags)
	if len(lags) > 0 {
		res.lagP50, res.lagMax = testmesh.Percentile(lags, 50), lags[len(lags)-1]
	}
	res.httpBytes = httpBytes.Load()
	res.meshBytesI = meshIn() - meshBefore
	return res, nil
}

func runCaseStudy(distinct int, skew float64, clients int, d, every time.Duration, out string) error {
	var rows []caseResult
	for _, cache := range []bool{true, false} {
		fmt.Fprintf(os.Stderr, "case study: Zipf replay, cache %v, %s...\n", cache, d)
		r, err := replay(cache, distinct, skew, clients, d, every)
		if err != nil {
			return err
		}
		rows = append(rows, r)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "### Case study: a skewed (Zipf) inference workload with model updates, result cache on and off\n\n")
	fmt.Fprintf(&b, `Measured %s on %s, both rows in the same run. Two peers in one process: peer 0 publishes PaddleOCR's
classifier and activates a new version (weights scaled, so outputs differ) every %s; %d clients send binary
OIP requests to peer 1 for %s, choosing among %d distinct inputs with a Zipf distribution (s = %.2f): a few
inputs dominate, as frames of a static camera do. Each activation invalidates the cache (entries are keyed by
the version's content address). *Version lag* is activation start on peer 0 until peer 1 serves the new
version (fetch, verify, load, warm-up). *Mesh bytes* are the bitswap bytes peer 1 received (artifacts and DAG
blocks). Runs saved = onnxruntime runs avoided by cache hits.

| result cache | requests | req/s | hit ratio | p50 | p99 | onnxruntime runs | invalidations / min | version lag p50 | max | HTTP bytes | mesh bytes in |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
`, time.Now().UTC().Format("2006-01-02"), machine(), every, clients, d, distinct, skew)
	for _, r := range rows {
		name := "off"
		if r.cache {
			name = "on"
		}
		ratio := 0.0
		if r.requests > 0 {
			ratio = float64(r.hits) / float64(r.requests)
		}
		fmt.Fprintf(&b, "| %s | %d | %.0f | %.3f | %s | %s | %d | %.1f | %s | %s | %.1f MiB | %.1f MiB |\n", name, r.requests,
			float64(r.requests)/r.dur.Seconds(), ratio, us(r.p50), us(r.p99), r.requests-r.hits,
			float64(r.activations)/r.dur.Minutes(), ms(r.lagP50), ms(r.lagMax), float64(r.httpBytes)/(1<<20), float64(r.meshBytesI)/(1<<20))
	}
	if len(rows) == 2 && rows[1].requests > 0 && rows[0].requests > 0 {
		on, off := rows[0], rows[1]
		fmt.Fprintf(&b, "\nWith the cache, throughput is %.2f× and p50 latency %.2f× of the run without it; %.0f %% of onnxruntime runs were avoided.\n",
			(float64(on.requests)/on.dur.Seconds())/(float64(off.requests)/off.dur.Seconds()), float64(on.p50)/float64(off.p50),
			100*float64(on.hits)/float64(on.requests))
	}
	table := b.String() + "\n"
	fmt.Print(table)
	if out == "" {
		return nil
	}
	return writeSection(out, "casestudy", table)
}
